// Interop: the reference BTP client (ilp-plugin-btp) dials our connector, sends one Prepare
// and prints the answer as one JSON line. Usage: node client.js <btp+ws url> <destination>
'use strict'
const crypto = require('crypto')
const BtpPlugin = require('ilp-plugin-btp')
const IlpPacket = require('ilp-packet')

const sha256 = (b) => crypto.createHash('sha256').update(b).digest()

async function main () {
  const [server, destination] = process.argv.slice(2)
  const plugin = new BtpPlugin({ server, reconnectInterval: 100 })
  const bound = setTimeout(() => { console.log(JSON.stringify({ error: 'timeout' })); process.exit(3) }, 15000)
  await plugin.connect()
  const data = Buffer.from('interop from ilp-plugin-btp')
  const prepare = IlpPacket.serializeIlpPrepare({
    amount: '42',
    executionCondition: sha256(sha256(data)),
    expiresAt: new Date(Date.now() + 20000),
    destination,
    data
  })
  const answer = await plugin.sendData(prepare)
  const parsed = IlpPacket.deserializeIlpPacket(answer)
  const out = { type: parsed.typeString }
  if (parsed.type === IlpPacket.Type.TYPE_ILP_FULFILL) {
    out.fulfillment = parsed.data.fulfillment.toString('hex')
    out.fulfillmentMatches = sha256(parsed.data.fulfillment).equals(sha256(sha256(data)))
  } else if (parsed.type === IlpPacket.Type.TYPE_ILP_REJECT) {
    out.code = parsed.data.code
    out.triggeredBy = parsed.data.triggeredBy
    out.message = parsed.data.message
  }
  console.log(JSON.stringify(out))
  clearTimeout(bound)
  await plugin.disconnect()
  process.exit(0)
}

main().catch((e) => { console.log(JSON.stringify({ error: String(e && e.stack || e) })); process.exit(2) })
