// gcs.js: firebase-tools' storage emulator (the GCS JSON API) on 127.0.0.1 for the cloud tests.
// usage: node gcs.js PORT
// Its command line needs Java 21 and downloads a rules JAR; the JSON API routes never evaluate
// rules, so the rules runtime's start/stop are replaced by no-ops and the StorageEmulator is
// registered directly. Prints "gcs: listening on PORT" when ready. No auth is checked.
'use strict';
const { StorageEmulator } = require('firebase-tools/lib/emulator/storage');
const { EmulatorRegistry } = require('firebase-tools/lib/emulator/registry');

async function main() {
  const port = Number(process.argv[2]);
  const emu = new StorageEmulator({
    host: '127.0.0.1',
    port,
    projectId: 'demo-s3dlio',
    rules: 'rules_version = "2"; service firebase.storage { match /b/{b}/o/{p=**} { allow read, write: if true; } }',
    auto_download: false,
  });
  const noop = async () => {};
  emu._rulesRuntime.start = noop;
  emu._rulesRuntime.stop = noop;
  emu._rulesManager.start = noop;
  emu._rulesManager.stop = noop;
  await EmulatorRegistry.start(emu);
  console.log('gcs: listening on ' + port);
  const stop = () => process.exit(0);
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}
main().catch((err) => {
  console.error('gcs: ' + (err && err.stack ? err.stack : err));
  process.exit(1);
});
