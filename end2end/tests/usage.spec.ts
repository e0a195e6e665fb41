import { createServer, type IncomingMessage, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { expect, test, type APIRequestContext, type Page } from "@playwright/test";

// Metered spend on the dashboard (issue #19): an agent's LLM calls through gateway
// mode, against a mock OpenAI-compatible provider that reports known usage, show on
// the Usage page by model, by connection, per day and per agent (tokens), and on
// the agent's wallet as holds (the ceiling) against what was settled.

const password = "correct horse battery 9";

async function shot(page: Page, name: string) {
  await page.screenshot({ path: `screenshots/${name}.png`, fullPage: true });
}

/** A chat-completions provider: every answer reports 1,000 tokens in and 500 out. */
async function mockProvider(): Promise<{ url: string; models: string[]; server: Server }> {
  const models: string[] = [];
  const server = createServer((req: IncomingMessage, res) => {
    let body = "";
    req.on("data", (c) => (body += c));
    req.on("end", () => {
      const model = JSON.parse(body).model as string;
      models.push(model);
      res.writeHead(200, { "content-type": "application/json" });
      res.end(
        JSON.stringify({
          id: `chatcmpl-${models.length}`,
          object: "chat.completion",
          created: 0,
          model,
          choices: [{ index: 0, message: { role: "assistant", content: "ok" }, finish_reason: "stop" }],
          usage: { prompt_tokens: 1000, completion_tokens: 500, total_tokens: 1500 },
        }),
      );
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return { url: `http://127.0.0.1:${port}`, models, server };
}

async function api(request: APIRequestContext, token: string, path: string, data: unknown) {
  const r = await request.post(path, { headers: { Authorization: `Bearer ${token}` }, data });
  expect(r.status(), `${path}: ${await r.text()}`).toBe(201);
  return r.json();
}

test("usage: metered calls show by model, connection, day and agent, and as held against settled", async ({ page }) => {
  const errors: string[] = [];
  page.on("console", (m) => m.type() === "error" && errors.push(m.text()));
  page.on("pageerror", (e) => errors.push(e.message));
  const provider = await mockProvider();
  const email = `usage-${Date.now()}@example.com`;

  await page.goto("/register");
  await page.getByLabel("Name").fill("Uma Usage");
  await page.getByLabel("Email").fill(email);
  await page.getByLabel("Password").fill(password);
  await page.getByRole("button", { name: "Create account" }).click();
  await expect(page).toHaveURL(/\/agents$/);

  // Nothing spent yet.
  await page.getByRole("navigation", { name: "Main" }).getByRole("link", { name: "Usage" }).click();
  await expect(page).toHaveURL(/\/usage$/);
  await expect(page.locator("#usage-empty")).toBeVisible();

  // Through the sponsor API: a permissive agent and a connection priced per model
  // ($1 / $2 per million tokens in / out for gpt-a, ten times that for gpt-b).
  const login = await page.request.post("/api/auth/login", { data: { email, password } });
  const token = (await login.json()).access_token as string;
  const created = await api(page.request, token, "/api/agents", { name: "usage-bot", policy: "permissive" });
  const key = created.api_key as string;
  await api(page.request, token, "/api/connections", {
    name: "llm",
    base_url: `${provider.url}/v1`,
    pricing: {
      provider: "openai",
      models: {
        "gpt-a": { input_per_mtok_micros: 1_000_000, output_per_mtok_micros: 2_000_000 },
        "gpt-b": { input_per_mtok_micros: 10_000_000, output_per_mtok_micros: 20_000_000 },
      },
    },
  });

  // Three calls declaring no cost: gpt-a costs 1000×1 + 500×2 = 2,000 micro-units, gpt-b 20,000.
  // The prompt is long enough (1,500 bytes) to hold the 1,000 tokens the provider reports.
  const prompt = "hello ".repeat(250);
  for (const model of ["gpt-a", "gpt-b", "gpt-a"]) {
    const r = await page.request.post("/api/gw/llm/chat/completions", {
      headers: { Authorization: `Bearer ${key}` },
      data: { model, messages: [{ role: "user", content: prompt }], max_tokens: 600 },
    });
    expect(r.status(), await r.text()).toBe(200);
    expect((await r.json()).usage.completion_tokens).toBe(500);
  }
  expect(provider.models).toEqual(["gpt-a", "gpt-b", "gpt-a"]);

  await page.reload();
  await expect(page.locator("#usage-spend .value")).toHaveText("$0.024");
  await expect(page.locator("#usage-spend")).toContainText("3 calls, settled");
  await expect(page.locator("#usage-tokens .value")).toHaveText("4,500");
  await expect(page.locator("#usage-ceiling .value")).toHaveText("0");
  // Dearest model first, each with its share of the bar.
  const models = page.locator("#usage-by-model li");
  await expect(models).toHaveCount(2);
  await expect(models.nth(0)).toHaveAttribute("data-key", "llm/gpt-b");
  await expect(models.nth(0).locator(".bar-value")).toHaveText("$0.02");
  await expect(models.nth(1)).toHaveAttribute("data-key", "llm/gpt-a");
  await expect(models.nth(1).locator(".bar-value")).toHaveText("$0.004");
  await expect(models.nth(1)).toContainText("2 calls · 3,000 tokens");
  await expect(models.nth(0)).toContainText("1 call · 1,500 tokens");
  await expect(models.nth(1).locator(".tier-fill")).toHaveAttribute("style", /^width: 20%;?$/);
  await expect(page.locator('#usage-by-connection li[data-key="llm"] .bar-value')).toHaveText("$0.024");
  await expect(page.locator("#usage-day-chart rect")).toHaveCount(1);
  const bot = page.locator('#usage-by-agent tr[data-agent="usage-bot"]');
  await expect(bot.locator('[data-col="in"]')).toHaveText("3,000");
  await expect(bot.locator('[data-col="out"]')).toHaveText("1,500");
  await expect(bot.locator('[data-col="spend"]')).toHaveText("$0.024");
  await shot(page, "70-usage");

  // Another period keeps the same calls (all made today).
  await page.locator(".range-switch").getByRole("link", { name: "7 days" }).click();
  await expect(page).toHaveURL(/\/usage\?days=7$/);
  await expect(page.locator("#usage-day-chart rect")).toHaveCount(1);
  await expect(page.locator("#usage-spend .value")).toHaveText("$0.024");

  // The agent's wallet: each hold at its ceiling, settled at what the call cost.
  await bot.getByRole("link", { name: "usage-bot" }).click();
  await expect(page).toHaveURL(/\/agents\/[0-9a-f-]{36}\?tab=wallet$/);
  const rows = page.locator("#wallet-history tbody tr");
  await expect(rows).toHaveCount(3);
  const settled = await rows.locator('[data-col="settled"]').allTextContents();
  expect(settled).toEqual(["$0.002", "$0.02", "$0.002"]);
  for (let i = 0; i < 3; i++) {
    await expect(rows.nth(i)).toHaveAttribute("data-status", "settled");
    const held = Number(((await rows.nth(i).locator('[data-col="held"]').textContent()) ?? "").replace("$", ""));
    expect(held).toBeGreaterThan(Number(settled[i].replace("$", "")));
  }
  await expect(rows.first().getByRole("link")).toHaveAttribute("href", /\/audit\?request_id=/);
  await shot(page, "71-wallet-history");

  // A phone-width Usage page scrolls nothing sideways (wide tables scroll in their card).
  await page.setViewportSize({ width: 375, height: 800 });
  await page.goto("/usage");
  await expect(page.locator("#usage-by-agent")).toBeVisible();
  const wide = await page.evaluate(() =>
    [...document.querySelectorAll("body *")]
      .filter((e) => e.getBoundingClientRect().right > 376 && (e.classList.contains("table-wrap") || !e.closest(".table-wrap")))
      .slice(0, 5)
      .map((e) => `${e.tagName.toLowerCase()}${e.id ? "#" + e.id : ""}.${[...e.classList].join(".")}`),
  );
  expect(await page.evaluate(() => document.documentElement.scrollWidth), wide.join(", ")).toBeLessThanOrEqual(375);
  await shot(page, "72-usage-375px");

  provider.server.close();
  expect(errors).toEqual([]);
});
