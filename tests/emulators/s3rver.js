// s3rver.js: start @20minutes/s3rver (verifies SigV4) on 127.0.0.1 for the cloud tests.
// usage: node s3rver.js PORT DIRECTORY BUCKET...   (run with NODE_OPTIONS=--openssl-legacy-provider:
// its listing continuation tokens use DES). Prints "s3rver: listening on PORT" when ready.
'use strict';
const S3rver = require('@20minutes/s3rver');
const [port, directory, ...buckets] = process.argv.slice(2);
const server = new S3rver({
  address: '127.0.0.1',
  port: Number(port),
  directory,
  silent: true,
  configureBuckets: buckets.map((name) => ({ name })),
});
server.run((err, addr) => {
  if (err) {
    console.error('s3rver: ' + err);
    process.exit(1);
  }
  console.log('s3rver: listening on ' + addr.port);
});
const stop = () => server.close(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
