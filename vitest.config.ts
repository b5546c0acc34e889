import { configDefaults, defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Real Azure Blob and R2, with credentials: `npm run test:cloud` (vitest.cloud.config.ts) runs it.
    exclude: [...configDefaults.exclude, 'test/targets/cloud-conformance.test.ts'],
    // Tests start real servers (agent, Azurite, s3rver, PostgreSQL): give them room on a 2-core machine.
    testTimeout: 60_000,
    hookTimeout: 120_000,
    pool: 'forks',
    maxWorkers: 2,
  },
});
