import { configDefaults, defineConfig } from 'vitest/config';

/**
 * The broker-restart test stops the RabbitMQ every other test uses: it runs alone, after the
 * rest (`npm test` runs vitest twice; TIDEPOOL_TEST_BROKER_RESTART=1 selects it).
 */
const BROKER_RESTART = 'test/amqp-broker-restart.test.ts';
const restartOnly = process.env.TIDEPOOL_TEST_BROKER_RESTART === '1';

export default defineConfig({
  test: {
    include: restartOnly ? [BROKER_RESTART] : ['test/**/*.test.ts'],
    exclude: restartOnly ? configDefaults.exclude : [...configDefaults.exclude, BROKER_RESTART],
    // Real processes: two cores, so at most two test files at once.
    maxWorkers: 2,
    testTimeout: 30_000,
    hookTimeout: 30_000,
  },
});
