import { expect, test, type Page } from "@playwright/test";

const password = "correct horse battery 9";

async function shot(page: Page, name: string) {
  await page.screenshot({ path: `screenshots/${name}.png`, fullPage: true });
}

/** Fails the test on any browser console error or uncaught exception. */
function watchConsole(page: Page) {
  const errors: string[] = [];
  page.on("console", (m) => m.type() === "error" && errors.push(m.text()));
  page.on("pageerror", (e) => errors.push(e.message));
  return errors;
}

/** Waits until the WebAssembly bundle has hydrated the page. */
async function hydrated(page: Page) {
  await page.waitForFunction(() => document.querySelector("body[data-hydrated]") !== null);
}

test("register, sign out, sign in, create an agent: key shown once, agent listed", async ({ page }) => {
  const errors = watchConsole(page);
  const email = `sponsor-${Date.now()}@example.com`;

  await page.goto("/agents");
  await expect(page).toHaveURL(/\/login\?next=/);
  await page.getByRole("link", { name: "Create an account" }).click();
  await expect(page.getByRole("heading", { name: "Create your account" })).toBeVisible();
  await hydrated(page);
  await shot(page, "01-register");

  await page.getByLabel("Name").fill("Ada Sponsor");
  await page.getByLabel("Email").fill(email);
  await page.getByLabel("Password").fill(password);
  await page.getByRole("button", { name: "Create account" }).click();
  await expect(page).toHaveURL(/\/agents$/);
  await expect(page.getByText("Ada Sponsor")).toBeVisible();
  await expect(page.getByText("No agents yet")).toBeVisible();

  await page.getByRole("button", { name: "Sign out" }).click();
  await expect(page).toHaveURL(/\/login/);

  await hydrated(page);
  await page.getByLabel("Email").fill(email);
  await page.getByLabel("Password").fill("wrong password 1");
  await page.getByRole("button", { name: "Sign in" }).click();
  await expect(page.getByRole("alert")).toHaveText("invalid email or password");
  await shot(page, "02-login-error");

  await page.getByLabel("Password").fill(password);
  await page.getByRole("button", { name: "Sign in" }).click();
  await expect(page).toHaveURL(/\/agents$/);
  await hydrated(page);

  await page.getByLabel("Name").fill("billing-bot");
  await page.getByLabel("Description").fill("Pays supplier invoices");
  await page.getByLabel("Daily limit (USD)").fill("25");
  await page.getByRole("button", { name: "Create agent" }).click();

  const key = page.getByLabel("New agent API key");
  await expect(key).toBeVisible();
  const apiKey = await key.inputValue();
  expect(apiKey).toMatch(/^aegis_[0-9a-f]{64}$/);
  const row = page.locator('#agents-table tr[data-agent="billing-bot"]');
  await expect(row).toBeVisible();
  await expect(row).toContainText("active");
  await expect(row).toContainText("$25.00");
  await shot(page, "03-agent-created");

  // The key works against the agent API...
  const me = await page.request.get("/api/agent/me", { headers: { Authorization: `Bearer ${apiKey}` } });
  expect(me.status()).toBe(200);
  expect((await me.json()).name).toBe("billing-bot");

  // ...and is never shown again.
  await page.reload();
  await expect(page.locator('#agents-table tr[data-agent="billing-bot"]')).toBeVisible();
  await expect(page.getByLabel("New agent API key")).toHaveCount(0);
  expect(await page.content()).not.toContain(apiKey);
  await shot(page, "04-agents-list");

  // The one deliberate wrong password is the only failed request the browser saw.
  expect(errors).toEqual(["Failed to load resource: the server responded with a status of 401 (Unauthorized)"]);
});

test.describe("without JavaScript", () => {
  test.use({ javaScriptEnabled: false });

  test("sign-in and create-agent forms work as plain HTML forms", async ({ page }) => {
    const email = `nojs-${Date.now()}@example.com`;
    // Register through the API; sign in through the plain form.
    const r = await page.request.post("/api/auth/register", {
      data: { email, password, name: "No Script" },
    });
    expect(r.status()).toBe(201);

    await page.goto("/login");
    await page.getByLabel("Email").fill(email);
    await page.getByLabel("Password").fill(password);
    await page.getByRole("button", { name: "Sign in" }).click();
    await expect(page).toHaveURL(/\/agents$/);
    await expect(page.getByRole("heading", { name: "Agents", exact: true })).toBeVisible();

    await page.getByLabel("Name").fill("plain-form-bot");
    await page.getByRole("button", { name: "Create agent" }).click();
    await expect(page.locator('#agents-table tr[data-agent="plain-form-bot"]')).toBeVisible();
    // The key survives the redirect of the plain form post, once.
    const key = page.getByLabel("New agent API key");
    await expect(key).toHaveValue(/^aegis_[0-9a-f]{64}$/);
    const apiKey = await key.inputValue();
    const me = await page.request.get("/api/agent/me", { headers: { "x-api-key": apiKey } });
    expect((await me.json()).name).toBe("plain-form-bot");
    await shot(page, "05-nojs-agent-created");
    await page.reload();
    await expect(page.getByLabel("New agent API key")).toHaveCount(0);
  });
});
