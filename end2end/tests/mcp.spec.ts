import { createServer, type IncomingMessage, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { expect, test, type Page } from "@playwright/test";

// The MCP gateway's dashboard (issue #21): an MCP connection is added with the
// connections form (kind MCP: a tool allow-list, no pricing), the list shows its kind
// and allow-list, and the agent's page lists the MCP tools its policy lets it see —
// nothing before the connection exists, then the allowed tool under its
// `<connection>__<tool>` name. No tool is ever called.

const password = "correct horse battery 9";

async function shot(page: Page, name: string) {
  await page.screenshot({ path: `screenshots/${name}.png`, fullPage: true });
}

async function hydrated(page: Page) {
  await page.waitForFunction(() => document.querySelector("body[data-hydrated]") !== null);
}

/** A local MCP server (JSON-RPC over one POST): lists two tools, records each method asked. */
async function mockMcp(): Promise<{ url: string; methods: string[]; server: Server }> {
  const methods: string[] = [];
  const server = createServer((req: IncomingMessage, res) => {
    let text = "";
    req.on("data", (chunk) => (text += chunk));
    req.on("end", () => {
      let request: { id?: unknown; method?: string } = {};
      try {
        request = JSON.parse(text);
      } catch {
        // answered as an unknown method below
      }
      methods.push(String(request.method));
      const result =
        request.method === "tools/list"
          ? {
              tools: [
                { name: "read_note", description: "Read one note", inputSchema: { type: "object" } },
                { name: "drop_all", description: "Delete every note", inputSchema: { type: "object" } },
              ],
            }
          : undefined;
      res.writeHead(200, { "content-type": "application/json" });
      res.end(
        JSON.stringify(
          result
            ? { jsonrpc: "2.0", id: request.id ?? null, result }
            : { jsonrpc: "2.0", id: request.id ?? null, error: { code: -32601, message: "method not found" } },
        ),
      );
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return { url: `http://127.0.0.1:${port}/mcp`, methods, server };
}

test("mcp: an MCP connection is added with its allow-list and the agent page lists the tools it may see", async ({ page }) => {
  const errors: string[] = [];
  page.on("console", (m) => m.type() === "error" && errors.push(m.text()));
  page.on("pageerror", (e) => errors.push(e.message));
  const upstream = await mockMcp();
  const email = `mcp-${Date.now()}@example.com`;

  // Register and create an agent (the built-in default policy: tool calls wait for approval, so they are listed).
  await page.goto("/register");
  await page.getByLabel("Name").fill("Mona Mcp");
  await page.getByLabel("Email").fill(email);
  await page.getByLabel("Password").fill(password);
  await page.getByRole("button", { name: "Create account" }).click();
  await expect(page).toHaveURL(/\/agents$/);
  await hydrated(page);
  await page.getByLabel("Name").fill("tool-bot");
  await page.getByRole("button", { name: "Create agent" }).click();
  await expect(page.getByLabel("New agent API key")).toHaveValue(/^aegis_[0-9a-f]{64}$/);
  await page.locator('#agents-table tr[data-agent="tool-bot"]').getByRole("link", { name: "tool-bot" }).click();
  await expect(page).toHaveURL(/\/agents\/[0-9a-f-]{36}$/);
  const agentUrl = page.url();

  // Its policy tab has an "MCP tools" section, empty while there is no MCP connection.
  await page.goto(`${agentUrl}?tab=policy`);
  const tools = page.locator("#mcp-tools");
  await expect(tools.getByRole("heading", { name: "MCP tools" })).toBeVisible();
  await expect(page.locator("#mcp-tools-empty")).toHaveText("No MCP tools — add an MCP connection");
  await expect(page.locator("#mcp-tools-empty").getByRole("link", { name: "add an MCP connection" })).toHaveAttribute(
    "href",
    "/connections",
  );

  // Add an MCP connection: choosing MCP swaps the pricing for the tool allow-list.
  await page.getByRole("navigation", { name: "Main" }).getByRole("link", { name: "Connections" }).click();
  await expect(page.locator("#connections-empty")).toBeVisible();
  await hydrated(page);
  const addForm = page.locator("#connection-form");
  await expect(addForm.getByLabel("Kind")).toHaveValue("http");
  await expect(addForm.getByLabel("Pricing")).toBeVisible();
  await expect(addForm.getByLabel("Tools (optional)")).toHaveCount(0);
  await addForm.getByLabel("Kind").selectOption("mcp");
  await expect(addForm.getByLabel("Pricing")).toHaveCount(0);
  await addForm.getByLabel("Name", { exact: true }).fill("notes");
  await addForm.getByLabel("Base URL", { exact: true }).fill(upstream.url);
  await addForm.getByLabel("Tools (optional)").fill("read_note");
  await page.getByRole("button", { name: "Add connection" }).click();

  const conn = page.locator('#connections-list [data-connection="notes"]');
  await expect(conn).toHaveAttribute("data-kind", "mcp");
  await expect(conn.locator(".connection-head .badge.kind")).toHaveText("MCP");
  await expect(conn.locator("dd.tools")).toHaveText("read_note");
  await expect(conn.locator(".gateway-url")).toHaveValue(/\/mcp$/);
  await expect(conn.locator("details.prices")).toHaveCount(0);
  // The add form starts over at HTTP.
  await expect(addForm.getByLabel("Kind")).toHaveValue("http");
  await page.reload();
  await expect(conn.locator(".connection-head .badge.kind")).toHaveText("MCP");
  await shot(page, "70-connection-mcp");

  // The agent now sees the allowed tool, under its /mcp name; drop_all is not on the allow-list.
  await page.goto(`${agentUrl}?tab=policy`);
  const list = page.locator("#mcp-tools-list");
  await expect(list.locator('li[data-tool="notes__read_note"]')).toContainText("Read one note");
  await expect(list.locator("li")).toHaveCount(1);
  await expect(page.locator("#mcp-tools-empty")).toHaveCount(0);
  await shot(page, "71-agent-mcp-tools");

  // Only the server's tools were listed; no tool was called.
  expect(upstream.methods.length).toBeGreaterThan(0);
  expect(upstream.methods.every((m) => m === "tools/list")).toBe(true);
  expect(errors).toEqual([]);
  upstream.server.close();
});
