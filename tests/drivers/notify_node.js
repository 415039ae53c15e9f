// node-postgres LISTEN/NOTIFY through pgsluice in transaction mode, run by tests/it/notify.rs.
//
// CLIENTS clients LISTEN on one channel and collect `client.on('notification')`; a separate
// client sends COUNT notifications; every listener must receive every one, in order. Each
// listener also runs a query while listening (LISTEN does not pin).
//
// Usage: node notify_node.js CONNSTRING CLIENTS COUNT
// Exit status 0 with one summary line when everything matched; otherwise failures on stderr.
'use strict';
const { Client } = require('pg');

const [conn, clients, count] = [process.argv[2], Number(process.argv[3]), Number(process.argv[4])];
const CHANNEL = 'node_jobs';

async function main() {
  const listeners = [];
  const received = [];
  for (let i = 0; i < clients; i++) {
    const c = new Client({ connectionString: conn });
    await c.connect();
    received.push([]);
    c.on('notification', (m) => {
      if (m.channel === CHANNEL) received[i].push(m.payload);
    });
    await c.query(`LISTEN ${CHANNEL}`);
    const r = await c.query('select 1 as one');
    if (r.rows[0].one !== 1) throw new Error('select 1');
    listeners.push(c);
  }
  const sender = new Client({ connectionString: conn });
  await sender.connect();
  for (let k = 0; k < count; k++) {
    await sender.query('select pg_notify($1, $2)', [CHANNEL, String(k)]);
  }
  const deadline = Date.now() + 60000;
  while (received.some((r) => r.length < count) && Date.now() < deadline) {
    await new Promise((res) => setTimeout(res, 50));
  }
  const want = Array.from({ length: count }, (_, k) => String(k));
  const errors = [];
  received.forEach((got, i) => {
    if (JSON.stringify(got) !== JSON.stringify(want)) {
      errors.push(`listener ${i}: got ${got.slice(0, 5)}... (${got.length}), want ${count} in order`);
    }
  });
  for (const c of listeners.concat([sender])) await c.end();
  if (errors.length) {
    console.error(errors.slice(0, 20).join('\n'));
    process.exit(1);
  }
  console.log(`listeners=${clients} notifications=${count} errors=0`);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
