// Smoke test of the browser tooling, with the dashboard test's shape but no
// services: serves a page from a tiny local server, changes it through the
// DOM, POSTs to the server and sees the number the page got over Server-Sent
// Events change, all without a reload, and keeps target/browser/smoke.png.
//
//   scripts/browser.sh smoke        (installs what is missing first)
//   node e2e/browser/smoke.mjs      (once installed)

import { open, run, screenshot, serve, waitForText } from "./lib.mjs";

const PAGE = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>browser smoke</title>
<link rel="icon" href="data:,">
<style>
  body { font: 16px system-ui, sans-serif; margin: 2rem; color: #1f2933; }
  .card { display: inline-block; padding: 1rem 1.5rem; margin: 0 1rem 1rem 0; border-radius: 8px; background: #f0f4f8; }
  .card b { display: block; font-size: 2rem; }
</style>
</head>
<body>
  <h1>Browser smoke</h1>
  <div class="card">events (live) <b id="count">…</b></div>
  <div class="card">clicks (DOM) <b id="clicks">0</b></div>
  <p><button id="click">Click</button> <input id="name" placeholder="your name"> <span id="greeting"></span></p>
  <script>
    window.loadMark = Math.random();
    let clicks = 0;
    document.getElementById("click").addEventListener("click", () => {
      document.getElementById("clicks").textContent = String(++clicks);
    });
    document.getElementById("name").addEventListener("input", (e) => {
      document.getElementById("greeting").textContent = "Hello, " + e.target.value;
    });
    new EventSource("/live").onmessage = (e) => {
      document.getElementById("count").textContent = JSON.parse(e.data).count;
    };
  </script>
</body>
</html>`;

/** The page, a count, POST /events to raise it and GET /live to watch it. */
function smokeServer() {
  let count = 0;
  const streams = new Set();
  const push = (res) => res.write(`data: ${JSON.stringify({ count })}\n\n`);
  return serve((req, res) => {
    if (req.method === "GET" && req.url === "/") {
      res.writeHead(200, { "content-type": "text/html; charset=utf-8" }).end(PAGE);
    } else if (req.method === "GET" && req.url === "/live") {
      res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-store" });
      streams.add(res);
      req.on("close", () => streams.delete(res));
      push(res);
    } else if (req.method === "POST" && req.url === "/events") {
      count += 1;
      streams.forEach(push);
      res.writeHead(204).end();
    } else {
      res.writeHead(404).end();
    }
  });
}

const server = await smokeServer();
try {
  await run("smoke", async ({ browser }) => {
    const page = await open(browser, `${server.url}/`);
    const mark = await page.evaluate(() => window.loadMark);

    await waitForText(page, "#count", "0");
    await page.click("#click");
    await page.click("#click");
    await waitForText(page, "#clicks", "2");
    await page.fill("#name", "chromium");
    await waitForText(page, "#greeting", "Hello, chromium");

    const posted = await fetch(`${server.url}/events`, { method: "POST" });
    if (posted.status !== 204) throw new Error(`POST /events answered ${posted.status}`);
    await waitForText(page, "#count", "1");

    const { errors, foreignRequests, navigations } = page.diagnostics;
    if (navigations.length > 0 || (await page.evaluate(() => window.loadMark)) !== mark) {
      throw new Error(`the page reloaded: ${navigations.join(", ")}`);
    }
    if (errors.length > 0) throw new Error(`page errors: ${errors.join("; ")}`);
    if (foreignRequests.length > 0) throw new Error(`requests to other hosts: ${foreignRequests.join(", ")}`);

    console.log(`screenshot: ${await screenshot(page, "smoke")}`);
  });
} finally {
  await server.close();
}
