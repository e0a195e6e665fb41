import { createServer, type IncomingMessage, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { expect, test, type Page } from "@playwright/test";

const password = "correct horse battery 9";

async function shot(page: Page, name: string) {
  await page.screenshot({ path: `screenshots/${name}.png`, fullPage: true });
}

/** A local upstream that records what reached it. */
async function mockUpstream(): Promise<{ url: string; seen: string[]; server: Server }> {
  const seen: string[] = [];
  const server = createServer((req: IncomingMessage, res) => {
    seen.push(`${req.method} ${req.url}`);
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify({ ok: true, method: req.method }));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return { url: `http://127.0.0.1:${port}`, seen, server };
}

test("a call needing approval appears live, is approved, and the agent gets the result", async ({ page }) => {
  const errors: string[] = [];
  page.on("console", (m) => m.type() === "error" && errors.push(m.text()));
  page.on("pageerror", (e) => errors.push(e.message));
  page.on("response", async (r) => {
    if (r.status() >= 500) errors.push(`${r.status()} ${r.request().method()} ${r.url()} ${r.request().postData() ?? ""} ${await r.text().catch(() => "")}`);
  });
  const upstream = await mockUpstream();
  const email = `approver-${Date.now()}@example.com`;

  // Sponsor and agent through the API (the default policy: a standard-trust agent's writes wait for a human).
  const reg = await page.request.post("/api/auth/register", { data: { email, password, name: "Grace Approver" } });
  expect(reg.status()).toBe(201);
  const token = (await reg.json()).access_token;
  const created = await page.request.post("/api/agents", {
    headers: { Authorization: `Bearer ${token}` },
    data: { name: "deploy-bot" },
  });
  const apiKey = (await created.json()).api_key;

  await page.goto("/login?next=/approvals");
  await page.getByLabel("Email").fill(email);
  await page.getByLabel("Password").fill(password);
  await page.getByRole("button", { name: "Sign in" }).click();
  await expect(page).toHaveURL(/\/approvals$/);
  await expect(page.locator("#approvals-empty")).toBeVisible();
  await page.waitForFunction(() => document.querySelector("body[data-hydrated]") !== null);
  await expect(page.locator('[data-live="on"]')).toHaveCount(1);
  await shot(page, "10-approvals-empty");

  // The agent asks; the queue shows it without a reload.
  const asked = await page.request.post("/api/proxy/execute", {
    headers: { Authorization: `Bearer ${apiKey}` },
    data: { method: "DELETE", url: `${upstream.url}/releases/42`, headers: { "x-trace": "secret-trace-value" }, action: "releases.delete" },
  });
  expect(asked.status()).toBe(202);
  const pending = await asked.json();
  expect(pending.decision).toBe("pending_approval");
  const card = page.locator(`[data-approval="${pending.approval_id}"]`);
  await expect(card).toBeVisible();
  await expect(card).toContainText("deploy-bot");
  await expect(card).toContainText(`DELETE`);
  await expect(card).toContainText("x-trace");
  await expect(card).not.toContainText("secret-trace-value");
  await expect(page.locator("#toasts")).toContainText("Approval needed");
  await expect(page.locator("#pending-count")).toHaveText("1");
  expect(upstream.seen).toEqual([]);
  await shot(page, "11-approval-live");

  // Approve: AEGIS performs the stored request once; the agent's poll sees the result.
  await card.getByRole("button", { name: "Approve" }).click();
  await expect(page.locator("#approvals-empty")).toBeVisible();
  const polled = await page.request.get(`${pending.poll_url}?wait=10`, { headers: { Authorization: `Bearer ${apiKey}` } });
  const result = await polled.json();
  expect(result.status).toBe("approved");
  expect(result.outcome.body.upstream.status).toBe(200);
  expect(upstream.seen).toEqual(["DELETE /releases/42"]);

  await page.getByRole("link", { name: "Approved" }).click();
  await expect(page.locator(`[data-approval="${pending.approval_id}"]`)).toContainText("upstream answered 200");
  await shot(page, "12-approval-history");

  // The audit tells the story under one request id, the chain verifies, and the CSV carries the hashes.
  await page.getByRole("link", { name: "Audit" }).click();
  await expect(page).toHaveURL(/\/audit$/);
  await page.getByLabel("Request id").fill(pending.request_id);
  await page.getByRole("button", { name: "Filter" }).click();
  await expect(page).toHaveURL(new RegExp(`request_id=${pending.request_id}`));
  const table = page.locator("#audit-table");
  for (const kind of ["approval.requested", "approval.approved", "proxy.intent", "proxy.outcome"]) {
    await expect(table).toContainText(kind);
  }
  await page.waitForFunction(() => document.querySelector("body[data-hydrated]") !== null);
  await page.getByRole("button", { name: "Verify chain" }).click();
  await expect(page.locator("#verify-result")).toContainText("valid");
  await shot(page, "13-audit");
  const [download] = await Promise.all([page.waitForEvent("download"), page.locator("#audit-csv").click()]);
  const csv = await (await import("node:fs/promises")).readFile(await download.path(), "utf8");
  const [header, ...rows] = csv.trim().split("\n");
  expect(header).toContain("prev_hash");
  expect(header).toContain("hash");
  expect(rows.length).toBeGreaterThanOrEqual(4);
  expect(csv).toContain(pending.request_id);

  upstream.server.close();
  expect(errors).toEqual([]);
});

test("a breaker trip shows a toast, the agent shows suspended, and resume brings it back", async ({ page }) => {
  const errors: string[] = [];
  page.on("console", (m) => m.type() === "error" && errors.push(m.text()));
  page.on("pageerror", (e) => errors.push(e.message));
  const email = `breaker-${Date.now()}@example.com`;
  const reg = await page.request.post("/api/auth/register", { data: { email, password, name: "Breaker Watcher" } });
  const token = (await reg.json()).access_token;
  const created = await page.request.post("/api/agents", {
    headers: { Authorization: `Bearer ${token}` },
    data: { name: "stormy-bot", policy: "permissive" },
  });
  const apiKey = (await created.json()).api_key;

  await page.goto("/login?next=/agents");
  await page.getByLabel("Email").fill(email);
  await page.getByLabel("Password").fill(password);
  await page.getByRole("button", { name: "Sign in" }).click();
  await expect(page).toHaveURL(/\/agents$/);
  await page.waitForFunction(() => document.querySelector("body[data-hydrated]") !== null);
  await expect(page.locator('[data-live="on"]')).toHaveCount(1);
  const row = page.locator('#agents-table tr[data-agent="stormy-bot"]');
  await expect(row).toContainText("active");

  // Ten calls to a private address: every one denied at egress; the denial-rate detector trips.
  for (let i = 0; i < 10; i++) {
    const r = await page.request.post("/api/proxy/execute", {
      headers: { Authorization: `Bearer ${apiKey}` },
      data: { method: "GET", url: "http://10.1.2.3/" },
    });
    expect(r.status()).toBe(403);
  }
  await expect(page.locator("#toasts")).toContainText("Circuit breaker tripped");
  await expect(row).toContainText("suspended");
  await shot(page, "14-breaker-tripped");

  await row.getByRole("button", { name: "Resume" }).click();
  await expect(row).toContainText("active");
  const me = await page.request.get("/api/agent/me", { headers: { Authorization: `Bearer ${apiKey}` } });
  expect((await me.json()).status).toBe("active");
  expect(errors).toEqual([]);
});

test("an approval's own page, where notifications link, asks for a sign-in and then decides", async ({ page }) => {
  const errors: string[] = [];
  page.on("console", (m) => m.type() === "error" && errors.push(m.text()));
  page.on("pageerror", (e) => errors.push(e.message));
  const upstream = await mockUpstream();
  const email = `linked-${Date.now()}@example.com`;
  const reg = await page.request.post("/api/auth/register", { data: { email, password, name: "Linked Approver" } });
  const token = (await reg.json()).access_token;
  const created = await page.request.post("/api/agents", {
    headers: { Authorization: `Bearer ${token}` },
    data: { name: "release-bot" },
  });
  const apiKey = (await created.json()).api_key;
  const asked = await page.request.post("/api/proxy/execute", {
    headers: { Authorization: `Bearer ${apiKey}` },
    data: { method: "DELETE", url: `${upstream.url}/releases/7` },
  });
  expect(asked.status()).toBe(202);
  const pending = await asked.json();
  // Signed out (this page's cookies are not the API's), the link shows nothing and decides nothing.
  await page.context().clearCookies();

  await page.goto(`/approvals/${pending.approval_id}`);
  await expect(page).toHaveURL(/\/login\?next=/);
  await expect(page.locator("body")).not.toContainText("release-bot");
  expect(upstream.seen).toEqual([]);
  await page.getByLabel("Email").fill(email);
  await page.getByLabel("Password").fill(password);
  await page.getByRole("button", { name: "Sign in" }).click();
  await expect(page).toHaveURL(new RegExp(`/approvals/${pending.approval_id}$`));
  const card = page.locator(`#approval-one [data-approval="${pending.approval_id}"]`);
  await expect(card).toContainText("release-bot");
  await expect(card).toContainText("pending");
  await page.waitForFunction(() => document.querySelector("body[data-hydrated]") !== null);
  await shot(page, "15-approval-page");
  await card.getByRole("button", { name: "Approve" }).click();
  await expect(card).toContainText("upstream answered 200");
  expect(upstream.seen).toEqual(["DELETE /releases/7"]);
  upstream.server.close();
  expect(errors).toEqual([]);
});
