// Interop: the reference BTP listener (ilp-plugin-btp in server mode) on a free port. Prints
// {"port":N} once listening, then fulfils every Prepare with sha256(data) and prints one
// {"served":...} line per packet. Runs until killed (or 30 s pass).
// With a certificate and key (PEM files) it listens over HTTPS (wss), through the plugin's
// `listener.wsOpts.server` option: the only way ilp-plugin-btp 1.5.0 serves TLS.
// Usage: node listener.js <secret> [certFile keyFile]
'use strict'
const crypto = require('crypto')
const BtpPlugin = require('ilp-plugin-btp')
const IlpPacket = require('ilp-packet')

const sha256 = (b) => crypto.createHash('sha256').update(b).digest()

const [secret, certFile, keyFile] = process.argv.slice(2)
const https = certFile && require('https').createServer({
  cert: require('fs').readFileSync(certFile),
  key: require('fs').readFileSync(keyFile)
})
const plugin = new BtpPlugin({ listener: { port: 0, secret, wsOpts: https ? { server: https } : undefined } })
plugin.registerDataHandler(async (buf) => {
  const prepare = IlpPacket.deserializeIlpPrepare(buf)
  console.log(JSON.stringify({ served: prepare.destination, amount: prepare.amount }))
  return IlpPacket.serializeIlpFulfill({ fulfillment: sha256(prepare.data), data: Buffer.alloc(0) })
})
plugin.connect().catch((e) => console.log(JSON.stringify({ error: String(e) })))
if (https) https.on('listening', () => console.log(JSON.stringify({ port: https.address().port })))
else plugin._wss.on('listening', () => console.log(JSON.stringify({ port: plugin._wss.address().port })))
setTimeout(() => process.exit(0), 30000)
