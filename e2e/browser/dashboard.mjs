// The dashboard (GET / of the query service) in headless Debian chromium,
// against real services:
// - the page loads, goes live (/analytics/live) and draws 48 hourly and 30
//   daily bars per metric, each chart's sum equal to /analytics/timeseries;
// - a click POSTed to the command shows in today's clicks, this hour's clicks
//   and both charts, without a reload;
// - no request to another host, no console error;
// - at 360 px wide nothing overflows horizontally;
// - screenshots: target/browser/dashboard.png (desktop) and dashboard-360.png.
//
//   COMMAND_URL=http://127.0.0.1:8080 QUERY_URL=http://127.0.0.1:8082 scripts/browser.sh run e2e/browser/dashboard.mjs
//
// e2e/tests/dashboard.rs (part of `make test`) starts an isolated stack,
// seeds 30 days of events and runs this script with those variables.
// Nothing here depends on the wall clock: near the end of an hour it waits
// for the next one before posting.

import { open, run, screenshot, waitForText } from "./lib.mjs";

const HOUR_MS = 3_600_000;
const RANGES = { hour: { count: 48, step: HOUR_MS }, day: { count: 30, step: 24 * HOUR_MS } };
const METRICS = ["users", "clicks", "impressions"];
const KEYS = { users: "unique_users", clicks: "clicks", impressions: "impressions" };

const COMMAND_URL = required("COMMAND_URL");
const QUERY_URL = required("QUERY_URL");

function required(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set (e.g. ${name}=http://127.0.0.1:8082)`);
  return value.replace(/\/$/, "");
}

/** "1,234" → 1234. */
const count = (text) => Number(text.replaceAll(",", ""));

function check(ok, message) {
  if (!ok) throw new Error(message);
}

/** Waits until the live stream delivered and every chart is drawn. */
async function waitReady(page) {
  await page.locator('#status[data-state="live"]').waitFor();
  await page.waitForFunction(() => document.querySelectorAll("figure.chart[data-sum]").length === 6);
}

/** Each chart: its bar count, and its sum equal to the API's for the same window. */
async function checkCharts(page) {
  const sums = {};
  for (const [range, { count: bars, step }] of Object.entries(RANGES)) {
    for (const metric of METRICS) {
      const chart = await page.evaluate((id) => {
        const figure = document.getElementById(id);
        return {
          from: Number(figure.dataset.from),
          sum: Number(figure.dataset.sum),
          bars: figure.querySelectorAll("rect.bar").length,
          label: figure.querySelector("svg").getAttribute("aria-label"),
        };
      }, `chart-${range}-${metric}`);
      check(chart.bars === bars, `${range} ${metric}: ${chart.bars} bars, want ${bars}`);
      check(chart.label && !chart.label.includes("loading"), `${range} ${metric}: aria-label ${chart.label}`);
      const to = chart.from + bars * step;
      const resp = await fetch(`${QUERY_URL}/analytics/timeseries?from=${chart.from}&to=${to}&interval=${range}`);
      check(resp.ok, `timeseries answered ${resp.status}`);
      const want = (await resp.json()).buckets.reduce((a, b) => a + b[KEYS[metric]], 0);
      check(chart.sum === want, `${range} ${metric}: the chart sums to ${chart.sum}, the API to ${want}`);
      sums[`${range}-${metric}`] = chart.sum;
    }
  }
  return sums;
}

/** Waits until at least `marginMs` remain in the current UTC hour (and so in the day). */
async function awayFromTheHourEnd(marginMs = 15_000) {
  const left = HOUR_MS - (Date.now() % HOUR_MS);
  if (left < marginMs) {
    console.log(`waiting ${Math.ceil(left / 1000) + 2} s for the next hour`);
    await new Promise((r) => setTimeout(r, left + 2_000));
  }
}

/** What the page shows now for today and this hour, as numbers. */
function readTotals(page) {
  return page.evaluate(() => {
    const text = (id) => document.getElementById(id).textContent;
    return {
      day: Number(document.getElementById("today").dataset.day),
      today: text("today-clicks"),
      hour: text("hour-clicks"),
      hourSum: Number(document.getElementById("chart-hour-clicks").dataset.sum),
      daySum: Number(document.getElementById("chart-day-clicks").dataset.sum),
    };
  });
}

/** No reload, no page or console error, no request to another host. */
async function checkClean(page, mark) {
  const { errors, foreignRequests, navigations } = page.diagnostics;
  const sameLoad = mark === undefined || (await page.evaluate(() => window.loadMark)) === mark;
  check(navigations.length === 0 && sameLoad, `the page reloaded: ${navigations.join(", ")}`);
  check(errors.length === 0, `page errors: ${errors.join("; ")}`);
  check(foreignRequests.length === 0, `requests to other hosts: ${foreignRequests.join(", ")}`);
}

await run("dashboard", async ({ browser }) => {
  await awayFromTheHourEnd();
  const page = await open(browser, `${QUERY_URL}/`);
  const mark = await page.evaluate(() => (window.loadMark = Math.random()));
  await waitReady(page);
  const sums = await checkCharts(page);
  console.log(`charts: ${JSON.stringify(sums)}`);

  // Today's exact unique users, clicks and impressions, as numbers.
  for (const metric of METRICS) await waitForText(page, `#today-${metric}`, /^\d{1,3}(,\d{3})*$/);
  const before = await readTotals(page);
  check(before.day === Math.floor(Date.now() / (24 * HOUR_MS)) * 24 * HOUR_MS, `the page shows day ${before.day}`);

  const timestamp = Date.now();
  const posted = await fetch(`${COMMAND_URL}/analytics?timestamp=${timestamp}&user=browser-test&click`, {
    method: "POST",
  });
  check(posted.status === 204, `POST /analytics answered ${posted.status}: ${await posted.text()}`);
  const started = Date.now();
  const today = await waitForText(page, "#today-clicks", (t) => count(t) === count(before.today) + 1, {
    timeoutMs: 20_000,
  });
  console.log(`today's clicks ${before.today} → ${today}, ${Date.now() - started} ms after the POST`);
  await waitForText(page, "#hour-clicks", (t) => count(t) === count(before.hour) + 1);
  await page.waitForFunction(
    ({ hourSum, daySum }) =>
      Number(document.getElementById("chart-hour-clicks").dataset.sum) === hourSum + 1 &&
      Number(document.getElementById("chart-day-clicks").dataset.sum) === daySum + 1,
    before,
  );
  await checkClean(page, mark);
  console.log(`screenshot: ${await screenshot(page, "dashboard")}`);

  // 360 px wide: nothing wider than the screen, every chart inside it.
  const narrow = await open(browser, `${QUERY_URL}/`, { width: 360, height: 740 });
  await waitReady(narrow);
  const layout = await narrow.evaluate(() => ({
    viewport: window.innerWidth,
    scrollWidth: document.documentElement.scrollWidth,
    bodyWidth: document.body.scrollWidth,
    widest: Math.max(...[...document.querySelectorAll("body *")].map((e) => e.getBoundingClientRect().right)),
  }));
  console.log(`360 px: ${JSON.stringify(layout)}`);
  check(
    layout.scrollWidth <= layout.viewport && layout.bodyWidth <= layout.viewport && layout.widest <= layout.viewport,
    `horizontal overflow at 360 px: ${JSON.stringify(layout)}`,
  );
  await waitForText(narrow, "#today-clicks", today);
  await checkClean(narrow);
  console.log(`screenshot: ${await screenshot(narrow, "dashboard-360")}`);
});
