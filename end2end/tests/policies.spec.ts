import { createServer, type IncomingMessage, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { expect, test, type Page } from "@playwright/test";

const password = "correct horse battery 9";

async function shot(page: Page, name: string) {
  await page.screenshot({ path: `screenshots/${name}.png`, fullPage: true });
}

async function hydrated(page: Page) {
  await page.waitForFunction(() => document.querySelector("body[data-hydrated]") !== null);
}

async function mockUpstream(): Promise<{ url: string; server: Server }> {
  const server = createServer((_req: IncomingMessage, res) => {
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify({ ok: true }));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return { url: `http://127.0.0.1:${port}`, server };
}

const GITHUB_ONLY = `package aegis

import rego.v1

default decision := "deny"

decision := "allow" if input.action.host == "api.github.com"

reasons contains "host not allowed" if decision == "deny"
`;

test("policies: playground, inline compile errors, sessions and the overview's charts", async ({ page }) => {
  const errors: string[] = [];
  // The compile error below is a 422 answer, which Chromium logs as a failed resource; that
  // one is expected. Anything else logged as an error fails the test.
  const expected422 = /Failed to load resource: the server responded with a status of 422/;
  page.on("console", (m) => m.type() === "error" && !expected422.test(m.text()) && errors.push(m.text()));
  page.on("pageerror", (e) => errors.push(e.message));
  const upstream = await mockUpstream();
  const email = `policies-${Date.now()}@example.com`;

  // Register and create an agent in the browser (the default policy).
  await page.goto("/register");
  await hydrated(page);
  await page.getByLabel("Name").fill("Pat Policy");
  await page.getByLabel("Email").fill(email);
  await page.getByLabel("Password").fill(password);
  await page.getByRole("button", { name: "Create account" }).click();
  await expect(page).toHaveURL(/\/agents$/);
  await hydrated(page);
  await page.getByLabel("Name").fill("play-bot");
  await page.getByRole("button", { name: "Create agent" }).click();
  const apiKey = await page.getByLabel("New agent API key").inputValue();

  // The playground with the built-in default policy: a read is allowed, a write waits.
  await page.getByRole("navigation", { name: "Main" }).getByRole("link", { name: "Policies" }).click();
  await expect(page).toHaveURL(/\/policies$/);
  await expect(page.locator('#policy-list li[data-policy="default"] .badge')).toHaveText("built-in");
  await hydrated(page);
  await page.getByLabel("Method").selectOption("GET");
  await page.getByLabel("URL").fill("https://api.example.com/items");
  await page.getByRole("button", { name: "Evaluate" }).click();
  await expect(page.locator("#verdict")).toHaveAttribute("data-decision", "allow");
  await shot(page, "30-policies-playground-allow");

  await page.getByLabel("Method").selectOption("POST");
  await page.getByLabel("URL").fill("https://evil.example/upload");
  await page.getByLabel("Body").fill('{"x": 1}');
  await page.getByRole("button", { name: "Evaluate" }).click();
  await expect(page.locator("#verdict")).toHaveAttribute("data-decision", "require_approval");
  await expect(page.locator("#verdict")).toContainText("writes need approval below trust 700");
  await shot(page, "31-policies-playground-approval");

  // A policy that does not compile: the compiler's message, inline, pointing at the line.
  await page.locator("#policy-name").fill("github-only");
  await page.getByLabel("Rego source").fill("package aegis\n\ndecision := )\n");
  await page.getByRole("button", { name: "Create policy" }).click();
  const compileError = page.locator("#policy-error [role=alert]");
  await expect(compileError).toContainText("policy.rego:3");
  await expect(compileError).toHaveAttribute("data-code", "policy_invalid");
  await shot(page, "32-policies-compile-error");

  // Fixed, it saves, and the playground can try it: a write to another host is denied.
  await page.getByLabel("Rego source").fill(GITHUB_ONLY);
  await page.getByRole("button", { name: "Create policy" }).click();
  await expect(page.locator("#policy-saved")).toContainText("Saved github-only version 1");
  await expect(page.locator('#policy-list li[data-policy="github-only"] .badge')).toHaveText("yours");
  await page.locator("#try-policy").selectOption({ label: "github-only" });
  await page.getByLabel("Method").selectOption("POST");
  await page.getByLabel("URL").fill("https://evil.example/upload");
  await page.getByRole("button", { name: "Evaluate" }).click();
  await expect(page.locator("#verdict")).toHaveAttribute("data-decision", "deny");
  await expect(page.locator("#verdict")).toContainText("host not allowed");
  await shot(page, "33-policies-playground-deny");
  await page.getByLabel("URL").fill("https://api.github.com/repos/o/r/issues");
  await page.getByRole("button", { name: "Evaluate" }).click();
  await expect(page.locator("#verdict")).toHaveAttribute("data-decision", "allow");

  // The saved policy opens with its source; the built-ins are read-only.
  await page.locator('#policy-list li[data-policy="github-only"] a').click();
  await expect(page.getByRole("heading", { name: "Edit github-only" })).toBeVisible();
  await expect(page.getByLabel("Rego source")).toHaveValue(GITHUB_ONLY);
  await shot(page, "34-policies-edit");

  // The account lists this session.
  await page.getByRole("navigation", { name: "Main" }).getByRole("link", { name: "Account" }).click();
  await expect(page).toHaveURL(/\/account$/);
  const current = page.locator('#sessions-table tr[data-current="true"]');
  await expect(current).toHaveCount(1);
  await expect(current).toContainText("this session");
  await shot(page, "35-account-sessions");

  // Two calls through the proxy (an allowed read that costs 0.25, an egress denial),
  // then the overview counts them and draws them.
  const call = (data: object) =>
    page.request.post("/api/proxy/execute", { headers: { Authorization: `Bearer ${apiKey}` }, data });
  expect((await call({ method: "GET", url: `${upstream.url}/items`, cost_micros: 250_000 })).status()).toBe(200);
  expect((await call({ method: "GET", url: "http://10.0.0.1/" })).status()).toBe(403);

  await page.goto("/");
  await expect(page.locator("#stat-actions .value")).toHaveText("2");
  await expect(page.locator("#stat-denials .value")).toHaveText("1");
  await expect(page.locator('#stat-denials li[data-stage="egress"]')).toContainText("1");
  await expect(page.locator("#stat-spend .value")).toHaveText("$0.25");
  await expect(page.locator("svg#spend-chart title")).toHaveCount(1);
  await expect(page.locator("svg#actions-chart rect.bar.allow")).toHaveCount(1);
  await expect(page.locator("svg#actions-chart rect.bar.deny")).toHaveCount(1);
  // The stylesheet reached the charts (an unclosed rule once left them black).
  const fills = await page.evaluate(() =>
    ["rect.bar.allow", "rect.bar.deny"].map(
      (s) => getComputedStyle(document.querySelector(`svg#actions-chart ${s}`)!).fill,
    ),
  );
  expect(new Set(fills).size, `bar colours ${fills}`).toBe(2);
  expect(fills).not.toContain("rgb(0, 0, 0)");
  await expect(page.locator("#trust-tiers li")).toHaveCount(5);
  await expect(page.locator("#latest-events li").first()).toBeVisible();
  await hydrated(page);
  await shot(page, "36-overview-24h");

  await page.getByRole("link", { name: "30 days" }).click();
  await expect(page).toHaveURL(/range=30d/);
  await expect(page.locator("svg#actions-chart")).toBeVisible();
  await expect(page.locator("#stat-actions .value")).toHaveText("2");
  await shot(page, "37-overview-30d");

  upstream.server.close();
  expect(errors).toEqual([]);
});
