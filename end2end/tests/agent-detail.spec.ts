import { createServer, type IncomingMessage, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { expect, test, type Page } from "@playwright/test";

const password = "correct horse battery 9";
const secretValue = "s3cret-ledger-value-7f1c";

async function shot(page: Page, name: string) {
  await page.screenshot({ path: `screenshots/${name}.png`, fullPage: true });
}

async function hydrated(page: Page) {
  await page.waitForFunction(() => document.querySelector("body[data-hydrated]") !== null);
}

/** A local upstream that records each call and the Authorization it carried. */
async function mockUpstream(): Promise<{ url: string; seen: string[]; server: Server }> {
  const seen: string[] = [];
  const server = createServer((req: IncomingMessage, res) => {
    seen.push(`${req.method} ${req.url} ${req.headers.authorization ?? "-"}`);
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify({ ok: true }));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return { url: `http://127.0.0.1:${port}`, seen, server };
}

test("agent detail: a granted secret's call shows in activity, limits persist, revoke and rotate work", async ({ page, baseURL }) => {
  const errors: string[] = [];
  page.on("console", (m) => m.type() === "error" && errors.push(m.text()));
  page.on("pageerror", (e) => errors.push(e.message));
  const upstream = await mockUpstream();
  const email = `detail-${Date.now()}@example.com`;

  // Register and create an agent through the dashboard.
  await page.goto("/register");
  await page.getByLabel("Name").fill("Lin Ledger");
  await page.getByLabel("Email").fill(email);
  await page.getByLabel("Password").fill(password);
  await page.getByRole("button", { name: "Create account" }).click();
  await expect(page).toHaveURL(/\/agents$/);
  await hydrated(page);
  await page.getByLabel("Name").fill("ledger-bot");
  await page.getByRole("button", { name: "Create agent" }).click();
  const firstKey = await page.getByLabel("New agent API key").inputValue();
  expect(firstKey).toMatch(/^aegis_[0-9a-f]{64}$/);

  // The list links to the agent's page; a new agent's only activity is its creation.
  await page.locator('#agents-table tr[data-agent="ledger-bot"]').getByRole("link", { name: "ledger-bot" }).click();
  await expect(page).toHaveURL(/\/agents\/[0-9a-f-]{36}$/);
  const agentUrl = page.url();
  await expect(page.locator("#agent-status")).toHaveText("active");
  await expect(page.locator("#activity-table")).toContainText("agent.created");
  await expect(page.locator("#activity-table")).not.toContainText("proxy.outcome");
  await shot(page, "20-agent-new");

  // The vault: add a secret for http://127.0.0.1 (any port) granted to the agent. Its value never comes back.
  await page.getByRole("navigation", { name: "Main" }).getByRole("link", { name: "Secrets" }).click();
  await expect(page).toHaveURL(/\/secrets$/);
  await expect(page.locator("#secrets-empty")).toBeVisible();
  await hydrated(page);
  await page.getByLabel("Name", { exact: true }).fill("ledger-token");
  await page.getByLabel("Value", { exact: true }).fill(secretValue);
  await page.getByLabel("Allowed hosts").fill("http://127.0.0.1:*");
  await page.getByLabel("Header name").fill("Authorization");
  await page.getByLabel("Header value format").fill("Bearer {secret}");
  await page.locator("#secret-agents").getByLabel("ledger-bot").check();
  await page.getByRole("button", { name: "Save secret" }).click();
  const secretRow = page.locator('#secrets-table tr[data-secret="ledger-token"]');
  await expect(secretRow).toContainText("http://127.0.0.1:*");
  await expect(secretRow).toContainText("ledger-bot");
  await expect(secretRow).toContainText(/authorization: Bearer \{secret\}/i);
  await expect(page.getByLabel("Value", { exact: true })).toHaveValue("");
  await page.reload();
  await expect(secretRow).toContainText("ledger-bot");
  expect(await page.content()).not.toContain(secretValue);
  await shot(page, "21-secrets");

  // The agent calls the mock upstream through the proxy; AEGIS injects the secret.
  const call = () =>
    page.request.post("/api/proxy/execute", {
      headers: { Authorization: `Bearer ${firstKey}` },
      data: { method: "GET", url: `${upstream.url}/ledger/entries`, secret: "ledger-token", action: "ledger.read" },
    });
  const done = await call();
  expect(done.status()).toBe(200);
  expect(upstream.seen).toEqual([`GET /ledger/entries Bearer ${secretValue}`]);

  // Activity shows the record.
  await page.goto(agentUrl);
  const activity = page.locator("#activity-table");
  await expect(activity).toContainText("proxy.outcome");
  await expect(activity).toContainText("GET 127.0.0.1");
  await expect(page.getByRole("link", { name: "Open in the audit log" })).toHaveAttribute("href", /\/audit\?agent=/);
  await shot(page, "22-agent-activity");

  // Wallet: a bad time zone is refused inline; good limits persist across a reload.
  await hydrated(page);
  await page.locator(".agent-tabs").getByRole("link", { name: "Wallet" }).click();
  await expect(page).toHaveURL(/tab=wallet/);
  await hydrated(page);
  await page.getByLabel("Daily limit (USD)").fill("12.5");
  await page.getByLabel("Monthly limit (USD)").fill("100");
  await page.getByLabel("Time zone").fill("Mars/Olympus");
  await page.getByLabel("Alert at (% of a limit)").fill("80");
  await page.getByRole("button", { name: "Save limits" }).click();
  await expect(page.locator('[role="alert"][data-code="invalid_timezone"]')).toBeVisible();
  await page.getByLabel("Time zone").fill("Europe/Paris");
  await page.getByRole("button", { name: "Save limits" }).click();
  await expect(page.locator("#wallet-saved")).toBeVisible();
  await page.reload();
  await expect(page.getByLabel("Daily limit (USD)")).toHaveValue("12.50");
  await expect(page.getByLabel("Monthly limit (USD)")).toHaveValue("100.00");
  await expect(page.getByLabel("Time zone")).toHaveValue("Europe/Paris");
  await expect(page.getByLabel("Alert at (% of a limit)")).toHaveValue("80");
  await expect(page.locator("#wallet-summary")).toContainText("of $12.50");
  await shot(page, "23-agent-wallet");

  // Secrets tab: revoke the grant; the agent's next call with it is refused before the upstream.
  await hydrated(page);
  await page.locator(".agent-tabs").getByRole("link", { name: "Secrets" }).click();
  const grantRow = page.locator('#agent-secrets tr[data-secret="ledger-token"]');
  await expect(grantRow).toContainText("may use");
  await hydrated(page);
  await grantRow.getByRole("button", { name: "Revoke ledger-token" }).click();
  await expect(grantRow).toContainText("not granted");
  await expect(grantRow.getByRole("button", { name: "Grant ledger-token" })).toBeVisible();
  const refused = await call();
  expect(refused.status()).toBeGreaterThanOrEqual(400);
  expect(upstream.seen).toHaveLength(1);
  await page.reload();
  await expect(grantRow).toContainText("not granted");
  await shot(page, "24-agent-secrets");

  // Trust: score, tier and the server-drawn history chart (or its empty state).
  await page.locator(".agent-tabs").getByRole("link", { name: "Trust" }).click();
  await expect(page.locator("#trust-score")).toHaveText(/^\d+$/);
  await expect(page.locator("#trust-chart, #trust-empty")).toHaveCount(1);
  await shot(page, "25-agent-trust");

  // Policy: switch to another of the sponsor's policies; the header follows.
  await hydrated(page);
  await page.locator(".agent-tabs").getByRole("link", { name: "Policy" }).click();
  await hydrated(page);
  await page.locator("#agent-policy-select").selectOption("permissive");
  // A live refresh (the agent's call is an event) re-reads the agent but keeps the unsaved choice.
  const refreshed = page.waitForResponse((r) => r.url().includes("/rpc/get_agent"));
  expect((await call()).status()).toBeGreaterThanOrEqual(400);
  await refreshed;
  await expect(page.locator(".agent-sub")).toContainText("policy default");
  await page.waitForTimeout(300);
  await expect(page.locator("#agent-policy-select")).toHaveValue("permissive");
  await page.getByRole("button", { name: "Save policy" }).click();
  await expect(page.locator(".agent-sub")).toContainText("policy permissive");
  await page.reload();
  await expect(page.locator("#agent-policy-select")).toHaveValue("permissive");
  await shot(page, "26-agent-policy");

  // Keys: rotation shows the new key once; the old key stops working at once.
  await page.locator(".agent-tabs").getByRole("link", { name: "Keys" }).click();
  await expect(page).toHaveURL(/tab=keys/);
  await hydrated(page);
  await page.getByRole("button", { name: "Rotate key" }).click();
  const newKeyField = page.getByLabel("New agent API key");
  await expect(newKeyField).toHaveValue(/^aegis_[0-9a-f]{64}$/);
  const newKey = await newKeyField.inputValue();
  expect(newKey).not.toBe(firstKey);
  await expect(page.locator("#new-key").getByRole("button", { name: "Copy" })).toBeVisible();
  await expect
    .poll(async () => newKey.startsWith(((await page.locator("#key-prefix").textContent()) ?? "").replace("…", "")))
    .toBe(true);
  await shot(page, "27-agent-keys");
  const oldMe = await page.request.get("/api/agent/me", { headers: { Authorization: `Bearer ${firstKey}` } });
  expect(oldMe.status()).toBe(401);
  const newMe = await page.request.get("/api/agent/me", { headers: { Authorization: `Bearer ${newKey}` } });
  expect((await newMe.json()).name).toBe("ledger-bot");
  await page.reload();
  await expect(page.getByLabel("New agent API key")).toHaveCount(0);
  expect(await page.content()).not.toContain(newKey);

  // Suspend and resume from the header.
  await hydrated(page);
  await page.locator("#agent-head").getByRole("button", { name: "Suspend" }).click();
  await expect(page.locator("#agent-status")).toHaveText("suspended");
  await page.locator("#agent-head").getByRole("button", { name: "Resume" }).click();
  await expect(page.locator("#agent-status")).toHaveText("active");

  // Connections: the gateway URL to give an SDK is this origin + the gateway path.
  await page.getByRole("navigation", { name: "Main" }).getByRole("link", { name: "Connections" }).click();
  await expect(page.locator("#connections-empty")).toBeVisible();
  await hydrated(page);
  await page.getByLabel("Name", { exact: true }).fill("ledger");
  await page.getByLabel("Base URL", { exact: true }).fill(`${upstream.url}/v1`);
  await page.getByLabel("Cost per call (USD)").fill("0.25");
  await page.getByRole("button", { name: "Add connection" }).click();
  const conn = page.locator('#connections-list [data-connection="ledger"]');
  await expect(conn).toContainText("$0.25 per call");
  await expect(conn.getByLabel("Base URL for your SDK")).toHaveValue(`${baseURL}/api/gw/ledger`);
  await shot(page, "28-connections");

  // A phone-width view of the agent page.
  await page.setViewportSize({ width: 375, height: 800 });
  await page.goto(agentUrl);
  await expect(page.locator("#activity-table")).toContainText("proxy.outcome");
  await shot(page, "29-agent-375px");

  upstream.server.close();
  // The one refused form (the bad time zone) is the only failed request the page made.
  expect(errors).toEqual(["Failed to load resource: the server responded with a status of 422 (Unprocessable Entity)"]);
});
