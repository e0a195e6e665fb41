import { defineConfig } from "@playwright/test";

// The server under test: the debug `aegis` binary built by `cargo leptos build`,
// on its own port with a fresh data directory (SQLite) for every run.
const port = Number(process.env.AEGIS_E2E_PORT ?? 3107);
const baseURL = `http://127.0.0.1:${port}`;
const dataDir = `${__dirname}/../target/e2e-data`;

export default defineConfig({
  testDir: "./tests",
  timeout: 60_000,
  expect: { timeout: 10_000 },
  fullyParallel: false,
  workers: 1,
  retries: 0,
  reporter: [["list"]],
  outputDir: "test-results",
  use: {
    baseURL,
    browserName: "chromium",
    launchOptions: {
      executablePath: process.env.CHROMIUM_PATH ?? "/usr/bin/chromium",
      args: [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
      ],
    },
    trace: "retain-on-failure",
  },
  webServer: {
    command: `rm -rf "${dataDir}" && ../target/debug/aegis serve`,
    url: `${baseURL}/healthz`,
    reuseExistingServer: false,
    timeout: 60_000,
    stdout: "pipe",
    stderr: "pipe",
    env: {
      AEGIS_DATA_DIR: dataDir,
      LEPTOS_SITE_ADDR: `127.0.0.1:${port}`,
      LEPTOS_SITE_ROOT: `${__dirname}/../target/site`,
      DATABASE_URL: "",
      REDIS_URL: "",
      // The tests' mock upstreams listen on loopback.
      AEGIS_EGRESS_ALLOW: "127.0.0.1/32",
      RUST_LOG: "warn",
    },
  },
});
