import { expect, test, type Page } from "@playwright/test";

// A phone-sized window: every page must fit it without sideways scrolling, keep
// its navigation reachable, and show where the keyboard focus is.
const width = 375;
test.use({ viewport: { width, height: 800 } });

const password = "correct horse battery 9";

async function shot(page: Page, name: string) {
  await page.screenshot({ path: `screenshots/40-${name}.png`, fullPage: true });
}

async function hydrated(page: Page) {
  await page.waitForFunction(() => document.querySelector("body[data-hydrated]") !== null);
}

/** The page is no wider than the window. */
async function fitsTheWindow(page: Page, name: string) {
  const scrollWidth = await page.evaluate(() => document.documentElement.scrollWidth);
  // On failure, name the elements that stick out, outermost first.
  const wide = await page.evaluate(
    (w) =>
      [...document.querySelectorAll("body *")]
        .filter((e) => e.getBoundingClientRect().right > w + 1)
        .slice(0, 5)
        .map((e) => `${e.tagName.toLowerCase()}${e.id ? "#" + e.id : ""}.${[...e.classList].join(".")}`),
    width,
  );
  expect(scrollWidth, `${name} scrolls sideways: ${wide.join(", ")}`).toBeLessThanOrEqual(width);
}

/** Every main navigation link is visible inside the window. */
async function navReachable(page: Page) {
  const links = page.getByRole("navigation", { name: "Main" }).getByRole("link");
  const count = await links.count();
  expect(count).toBeGreaterThanOrEqual(4);
  for (let i = 0; i < count; i++) {
    const link = links.nth(i);
    await expect(link).toBeVisible();
    const box = await link.boundingBox();
    expect(box, `nav link ${i}`).not.toBeNull();
    expect(box!.x).toBeGreaterThanOrEqual(0);
    expect(box!.x + box!.width).toBeLessThanOrEqual(width);
  }
}

test("every page fits 375 px, keeps its navigation reachable and shows keyboard focus", async ({ page }) => {
  const errors: string[] = [];
  page.on("console", (m) => m.type() === "error" && errors.push(m.text()));
  page.on("pageerror", (e) => errors.push(e.message));

  // Signed out: the sign-in and registration forms.
  for (const [path, name] of [["/login", "login"], ["/register", "register"]]) {
    await page.goto(path);
    await hydrated(page);
    await fitsTheWindow(page, path);
    for (const input of await page.locator("main input:not([type=hidden]), main select").all()) {
      const id = await input.getAttribute("id");
      expect(id, "form controls have ids for their labels").toBeTruthy();
      await expect(page.locator(`label[for="${id}"]`)).toHaveCount(1);
    }
    await shot(page, name);
  }

  // Some data so the tables and cards have rows: agents with long names, a denied
  // call and a pending approval (its upstream is never called while it waits).
  const email = `narrow-${Date.now()}@example.com`;
  const reg = await page.request.post("/api/auth/register", { data: { email, password, name: "Narrow Screen Sponsor" } });
  expect(reg.status()).toBe(201);
  const token = (await reg.json()).access_token;
  let apiKey = "";
  for (const name of ["invoice-reconciliation-agent-with-a-long-name", "support-triage"]) {
    const created = await page.request.post("/api/agents", {
      headers: { Authorization: `Bearer ${token}` },
      data: { name, description: "Created by the responsive test", daily_limit_micros: 25_000_000 },
    });
    expect(created.status()).toBe(201);
    apiKey = (await created.json()).api_key;
  }
  const agent = { Authorization: `Bearer ${apiKey}` };
  const denied = await page.request.post("/api/proxy/execute", {
    headers: agent,
    data: { method: "GET", url: "http://169.254.169.254/latest/meta-data/iam/security-credentials/a-very-long-role-name" },
  });
  expect(denied.status()).toBe(403);
  const parked = await page.request.post("/api/proxy/execute", {
    headers: agent,
    data: {
      method: "POST",
      url: "http://127.0.0.1:9/v1/customers/cus_0123456789/invoices/in_0123456789abcdef/finalize?expand=lines",
      body: JSON.stringify({ note: "x".repeat(400) }),
    },
  });
  expect(parked.status()).toBe(202);

  await page.goto("/login");
  await hydrated(page);
  await page.getByLabel("Email").fill(email);
  await page.getByLabel("Password").fill(password);
  await page.getByRole("button", { name: "Sign in" }).click();
  await expect(page).toHaveURL(/\/agents$|\/$/);

  for (const [path, name] of [
    ["/", "overview"],
    ["/agents", "agents"],
    ["/approvals", "approvals"],
    ["/audit", "audit"],
    ["/policies", "policies"],
    ["/secrets", "secrets"],
    ["/connections", "connections"],
    ["/usage", "usage"],
    ["/account", "account"],
  ]) {
    await page.goto(path);
    await hydrated(page);
    await expect(page.locator("main h1").first()).toBeVisible();
    await fitsTheWindow(page, path);
    await navReachable(page);
    // Buttons say what they do (text or aria-label).
    for (const button of await page.getByRole("button").all()) {
      const label = ((await button.getAttribute("aria-label")) ?? (await button.innerText())).trim();
      expect(label, `a button on ${path} has no accessible name`).not.toBe("");
    }
    await shot(page, name);
  }

  // Keyboard: Tab from the top of the page reaches the first nav link, and it shows focus.
  await page.goto("/");
  await hydrated(page);
  const first = page.getByRole("navigation", { name: "Main" }).getByRole("link").first();
  let reached = false;
  for (let i = 0; i < 6 && !reached; i++) {
    await page.keyboard.press("Tab");
    reached = await first.evaluate((el) => el === document.activeElement);
  }
  expect(reached, "Tab reaches the first nav link").toBe(true);
  const ring = await first.evaluate((el) => {
    const s = getComputedStyle(el);
    return { outline: s.outlineStyle, width: s.outlineWidth, shadow: s.boxShadow };
  });
  expect(ring.outline !== "none" && ring.width !== "0px" || ring.shadow !== "none", JSON.stringify(ring)).toBe(true);
  await shot(page, "focus");

  expect(errors).toEqual([]);
});
