// Interop: the reference JS connector (npm ilp-connector 23.0.2) with the given config.
// Listener accounts should use port 0: once each listener is up this prints
// {"listening":"<account>","port":N}, and {"connected":true} once every account is connected.
// Runs until killed (or 60 s pass).
// Usage: node connector.js '<config JSON: ilpAddress, accounts, routes, ...>'
'use strict'
const { createApp } = require('ilp-connector')

const config = Object.assign({ backend: 'one-to-one', spread: 0, env: 'test' }, JSON.parse(process.argv[2]))
const app = createApp(config)

const listeners = Object.keys(config.accounts).filter((id) => config.accounts[id].options.listener)
for (const id of listeners) {
  // The plugin creates its server inside connect(); wait for it, then for its port.
  const poll = setInterval(() => {
    const wss = app.getPlugin(id)._wss
    if (!wss) return
    clearInterval(poll)
    const announce = () => console.log(JSON.stringify({ listening: id, port: wss.address().port }))
    if (wss.address()) announce()
    else wss.on('listening', announce)
  }, 10)
}
app.listen()
  .then(() => console.log(JSON.stringify({ connected: true })))
  .catch((e) => console.log(JSON.stringify({ error: String(e) })))
setTimeout(() => process.exit(0), 60000)
