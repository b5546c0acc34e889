// Starts Azurite and s3rver behind the R2 rules (the emulators the tests use), creates the container and the
// bucket, and prints the TCAB_TEST_* variables that point `npm run test:cloud` at them: a dry run of the cloud
// conformance suite without an Azure or Cloudflare account. Stops on Ctrl-C. Run with the project's Node 24
// (`npx node scripts/cloud-dry-run.mjs`), which loads the TypeScript sources directly.
import { registerHooks } from 'node:module';
import { BlobServiceClient } from '@azure/storage-blob';

// The sources import each other as `./x.js`; loaded as TypeScript, that file is `./x.ts`.
registerHooks({
  resolve(specifier, context, next) {
    if (specifier.startsWith('.') && specifier.endsWith('.js') && context.parentURL?.endsWith('.ts'))
      return next(`${specifier.slice(0, -3)}.ts`, context);
    return next(specifier, context);
  },
});
const { startAzurite, startS3Server } = await import('../src/dev/emulators.ts');
const { startR2Proxy } = await import('../test/support/r2-proxy.ts');

const azurite = await startAzurite();
const s3 = await startS3Server({ buckets: ['tcab-cloud'] });
await BlobServiceClient.fromConnectionString(azurite.connectionString).getContainerClient('tcab-cloud').createIfNotExists();
const r2 = await startR2Proxy({ upstream: s3.endpoint, accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey });
const key = /AccountKey=([^;]+)/.exec(azurite.connectionString)[1];
const variables = {
  TCAB_TEST_AZBLOB_ACCOUNT_URL: azurite.endpoint,
  TCAB_TEST_AZBLOB_CONTAINER: 'tcab-cloud',
  TCAB_TEST_AZBLOB_KEY: key,
  TCAB_TEST_R2_ENDPOINT: r2.endpoint,
  TCAB_TEST_R2_BUCKET: 'tcab-cloud',
  TCAB_TEST_R2_ACCESS_KEY_ID: s3.accessKeyId,
  TCAB_TEST_R2_SECRET_ACCESS_KEY: s3.secretAccessKey,
};
// The emulators' well-known development keys, not secrets.
for (const [name, value] of Object.entries(variables)) console.log(`export ${name}='${value}'`);
console.error(
  '# Azurite and s3rver are running; in another shell, set the variables above and run: npm run test:cloud. Ctrl-C stops them.',
);
const stop = async () => {
  await r2.stop();
  await Promise.all([azurite.stop(), s3.stop()]);
  process.exit(0);
};
process.once('SIGINT', stop);
process.once('SIGTERM', stop);
setInterval(() => {}, 1 << 30);
