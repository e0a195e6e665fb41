import { expect, test, type Locator, type Page } from "@playwright/test";

// Metered connections (issue #19): a connection added as "openai" takes AEGIS's
// default price table; its Prices editor narrows it to one model with an output cap,
// refuses text that is not JSON (saying which field), and switching to flat brings
// back the cost per call. Nothing here calls the upstream.

const password = "correct horse battery 9";

async function shot(page: Page, name: string) {
  await page.screenshot({ path: `screenshots/${name}.png`, fullPage: true });
}

async function hydrated(page: Page) {
  await page.waitForFunction(() => document.querySelector("body[data-hydrated]") !== null);
}

/** The connection's Prices editor, opened if it is not (it may stay open across a save). */
async function openPrices(conn: Locator): Promise<Locator> {
  const details = conn.locator("details.prices");
  if ((await details.getAttribute("open")) === null) {
    await details.locator("summary").click();
  }
  await expect(details).toHaveAttribute("open", "");
  return details;
}

test("connections: a metered connection's prices are narrowed, refused when not JSON, and removed", async ({ page }) => {
  const errors: string[] = [];
  page.on("console", (m) => m.type() === "error" && errors.push(m.text()));
  page.on("pageerror", (e) => errors.push(e.message));
  const email = `pricing-${Date.now()}@example.com`;

  await page.goto("/register");
  await page.getByLabel("Name").fill("Priya Pricer");
  await page.getByLabel("Email").fill(email);
  await page.getByLabel("Password").fill(password);
  await page.getByRole("button", { name: "Create account" }).click();
  await expect(page).toHaveURL(/\/agents$/);

  // Add a connection metered by OpenAI's default table (models omitted).
  await page.getByRole("navigation", { name: "Main" }).getByRole("link", { name: "Connections" }).click();
  await expect(page.locator("#connections-empty")).toBeVisible();
  await hydrated(page);
  const addForm = page.locator("#connection-form");
  await addForm.getByLabel("Name", { exact: true }).fill("llm");
  await addForm.getByLabel("Base URL", { exact: true }).fill("https://api.openai.com/v1");
  await addForm.getByLabel("Cost per call (USD)").fill("0.05");
  await expect(addForm.getByLabel("Pricing")).toHaveValue("flat");
  await addForm.getByLabel("Pricing").selectOption("openai");
  await page.getByRole("button", { name: "Add connection" }).click();

  const conn = page.locator('#connections-list [data-connection="llm"]');
  const charge = conn.locator(".connection-head .cost");
  await expect(charge).toHaveText(/^metered · openai · \d+ models$/);
  await expect(charge).toHaveAttribute("data-charge", "openai");
  // The add form starts over at flat.
  await expect(addForm.getByLabel("Pricing")).toHaveValue("flat");

  let prices = await openPrices(conn);
  const rows = prices.locator("table.prices-table tbody tr");
  await expect(prices.locator('tr[data-model="gpt-4o-mini"]')).toBeVisible();
  const defaults = await rows.count();
  expect(defaults).toBeGreaterThan(1);
  await expect(charge).toHaveText(`metered · openai · ${defaults} models`);
  // Dollars per million tokens, from micro-units.
  await expect(prices.locator('tr[data-model="gpt-4o-mini"] td').nth(1)).toHaveText(/^\$\d+\.\d{2,6}$/);
  // The editor holds the saved table, complete (every model with its prices).
  await expect(prices.getByLabel("Pricing")).toHaveValue("openai");
  await expect(prices.getByLabel("Models (JSON)")).toHaveValue(/"gpt-4o-mini": \{\s*"input_per_mtok_micros": \d+/);
  await expect(prices.getByLabel("Max output tokens")).toHaveValue("");
  await shot(page, "60-connection-metered");

  // Narrow it to one model at its default prices, with an output cap.
  await prices.getByLabel("Models (JSON)").fill('{"gpt-4o-mini": {}}');
  await prices.getByLabel("Max output tokens").fill("256");
  await prices.getByRole("button", { name: "Save prices" }).click();
  await expect(charge).toHaveText("metered · openai · 1 model · output cap 256");
  await expect(page.locator("#pricing-saved")).toHaveText("Prices saved for llm.");
  prices = await openPrices(conn);
  await expect(rows).toHaveCount(1);
  await expect(rows.first()).toHaveAttribute("data-model", "gpt-4o-mini");
  await expect(prices.getByLabel("Max output tokens")).toHaveValue("256");
  await expect(prices.getByLabel("Models (JSON)")).toHaveValue(/^\{\s*"gpt-4o-mini": \{[^}]*\}\s*\}$/);
  await shot(page, "61-connection-one-model");

  // Text that is not JSON is refused, naming the field; what was typed stays.
  const error = prices.locator('[role="alert"][data-code="invalid_pricing"]');
  await prices.getByLabel("Models (JSON)").fill('{"gpt-4o-mini": ');
  await prices.getByRole("button", { name: "Save prices" }).click();
  await expect(error).toContainText("pricing.models is not valid JSON");
  await expect(prices.getByLabel("Models (JSON)")).toHaveValue('{"gpt-4o-mini": ');
  await expect(charge).toHaveText("metered · openai · 1 model · output cap 256");
  await expect(page.locator("#pricing-saved")).toHaveCount(0);
  await shot(page, "62-connection-invalid-json");

  // A model AEGIS has no price for needs prices: the server's message names it.
  await prices.getByLabel("Models (JSON)").fill('{"my-model": {}}');
  await prices.getByRole("button", { name: "Save prices" }).click();
  await expect(error).toContainText('pricing.models["my-model"]');
  await expect(charge).toHaveText("metered · openai · 1 model · output cap 256");

  // Flat again: the cost per call, and an editor with nothing metered.
  await prices.getByLabel("Pricing").selectOption("flat");
  await prices.getByRole("button", { name: "Save prices" }).click();
  await expect(charge).toHaveText("$0.05 per call");
  await expect(charge).toHaveAttribute("data-charge", "flat");
  prices = await openPrices(conn);
  await expect(prices.locator("table.prices-table")).toHaveCount(0);
  await expect(prices.getByLabel("Pricing")).toHaveValue("flat");
  await expect(prices.getByLabel("Models (JSON)")).toHaveValue("");
  await expect(error).toHaveCount(0);

  // The same after a full reload (server-rendered).
  await page.reload();
  await expect(charge).toHaveText("$0.05 per call");
  await shot(page, "63-connection-flat");

  // The two refused saves are the only failed requests the page made.
  expect(errors).toEqual([
    "Failed to load resource: the server responded with a status of 422 (Unprocessable Entity)",
    "Failed to load resource: the server responded with a status of 422 (Unprocessable Entity)",
  ]);
});
