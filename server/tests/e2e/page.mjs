// Drives the chat page in headless Chromium (Debian's /usr/bin/chromium) against a running
// server: `node page.mjs <base url>`. Run by server/tests/api/browser.rs, which starts the server
// with a fake model provider (answers with "slowly" in the question stream slowly).
// Exits 0 when every step passed; prints one line per step.
//
// SCREENSHOTS_DIR: where the phone and desktop screenshots go (default: a temporary folder,
// removed at the end).

import { chromium } from "playwright-core";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

const base = process.argv[2];
if (!base) {
  console.error("usage: node page.mjs <base url>");
  process.exit(2);
}
const origin = new URL(base).origin;
const wsOrigin = origin.replace(/^http/, "ws");
const STEP_MS = 30_000;
const OVERALL_MS = 240_000;

const profile = fs.mkdtempSync(path.join(os.tmpdir(), "chat-e2e-profile-"));
const shots = process.env.SCREENSHOTS_DIR || fs.mkdtempSync(path.join(os.tmpdir(), "chat-e2e-shots-"));
const problems = []; // CSP violations, page errors, third-party requests
const framesSent = []; // every frame the page sent on a chat socket: { socket, frame }
const sockets = []; // routed chat sockets: { page, server } pairs, newest last
let socketCount = 0;

const overall = setTimeout(() => {
  console.error(`not ok - the browser test did not finish within ${OVERALL_MS / 1000} s`);
  process.exit(1);
}, OVERALL_MS);

function ok(what) {
  console.log(`ok - ${what}`);
}

function check(condition, what) {
  if (!condition) throw new Error(`check failed: ${what}`);
}

/** Waits until `condition()` (checked in node, not in the page) holds. */
async function until(condition, what, ms = STEP_MS) {
  const deadline = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
  viewport: { width: 1100, height: 760 },
});
context.setDefaultTimeout(STEP_MS);

try {
  // The chat socket goes through a proxy the test controls, so it can drop the connection.
  await context.routeWebSocket(/\/ws\/chat$/, (ws) => {
    const server = ws.connectToServer();
    sockets.push({ page: ws, server });
  });
  // Report CSP violations from inside the page too (the console also names them).
  await context.addInitScript(() => {
    document.addEventListener("securitypolicyviolation", (e) => {
      console.error(`Content Security Policy violation: ${e.violatedDirective} ${e.blockedURI}`);
    });
  });

  const page = context.pages()[0] || (await context.newPage());
  page.on("console", (message) => {
    const text = message.text();
    if (/Content Security Policy|Refused to/i.test(text)) problems.push(`CSP: ${text}`);
    else if (message.type() === "error") console.log(`# console error: ${text}`);
  });
  page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
  page.on("request", (request) => {
    const url = request.url();
    if (!url.startsWith(origin + "/") && !url.startsWith(wsOrigin + "/") && !url.startsWith("data:")) {
      problems.push(`request to another origin: ${url}`);
    }
  });
  page.on("websocket", (ws) => {
    const socket = ++socketCount;
    ws.on("framesent", ({ payload }) => {
      try {
        framesSent.push({ socket, frame: JSON.parse(String(payload)) });
      } catch {
        framesSent.push({ socket, frame: { type: "(not json)" } });
      }
    });
  });
  const sent = (type) => framesSent.filter((f) => f.frame.type === type);
  const bots = page.locator("#log .msg.bot");
  const lastBot = () => bots.last();
  const conversations = page.locator("#conversations li");

  // --- the page and its headers -------------------------------------------------------------
  const response = await page.goto(base + "/");
  const headers = response.headers();
  check(headers["content-security-policy"]?.startsWith("default-src 'none'"), "CSP header on /");
  check(headers["x-content-type-options"] === "nosniff", "nosniff on /");
  check(headers["x-frame-options"] === "DENY", "X-Frame-Options on /");
  check(headers["referrer-policy"] === "no-referrer", "Referrer-Policy on /");
  ok("the page loads with its security headers");

  // --- sign up ------------------------------------------------------------------------------
  const username = `e2e_${Date.now().toString(36)}`;
  const password = "correct horse battery staple";
  await page.getByRole("button", { name: "Create an account" }).click();
  check((await page.locator("#email").getAttribute("type")) === "email", "email field has type=email");
  await page.locator("#password-rules").waitFor();
  check(/at least 8 characters/i.test(await page.locator("#password-rules").textContent()), "password rules shown");
  await page.fill("#username", username);
  await page.fill("#email", `${username}@example.com`);
  await page.fill("#password", password);
  await page.getByRole("button", { name: "Sign up" }).click();
  await page.locator("#chat-view").waitFor();
  await page.waitForFunction(() => !document.getElementById("send").disabled);
  check((await page.locator("#whoami").textContent()) === username, "the page says who is logged in");
  ok("signed up, logged in and connected");

  // --- ask (with the keyboard), watch it stream, see a source ----------------------------------
  await page.locator("#question").focus();
  await page.keyboard.type("How long do refunds take?");
  await page.keyboard.press("Enter");
  // Text shows while the answer is still streaming (checked on every animation frame).
  await page.waitForFunction(() => document.querySelector("#log .msg.bot.streaming .body p"));
  ok("the answer streams in");
  await page.locator("#log .msg.bot:not(.streaming) .feedback").first().waitFor();
  const first = lastBot();
  const firstText = await first.locator(".body").textContent();
  check(firstText.includes("5 business days"), `the answer text (${firstText})`);
  check((await first.locator(".body ol li").count()) === 3, "a numbered list stays a list");
  check((await first.locator(".body p").count()) >= 2, "paragraphs stay paragraphs");
  check(firstText.includes("<b>receipt</b>"), "markup from the model is shown as text");
  check((await first.locator(".body b").count()) === 0, "markup from the model is never HTML");
  await first.locator(".sources > summary").click();
  const source = first.locator(".sources details").first();
  await source.locator("summary").click();
  check(/returns\.md/.test(await source.locator("summary").textContent()), "a source names its document");
  check(/refund/i.test(await source.locator("blockquote").textContent()), "a source shows its snippet");
  ok("the answer has paragraphs, a list and an expandable source");

  // --- feedback: the frame is sent (the server may or may not know it yet) ------------------
  await first.getByRole("button", { name: "Helpful", exact: true }).click();
  await until(() => sent("feedback").length > 0, "a feedback frame");
  const feedback = sent("feedback");
  check(feedback.length === 1 && feedback[0].frame.rating === "up" && feedback[0].frame.message_id, "a feedback frame");
  check((await first.getByRole("button", { name: "Helpful", exact: true }).getAttribute("aria-pressed")) === "true", "the rating shows as pressed");
  // The server answers: `feedback_ack` where it takes feedback, an `error` frame where not.
  const said = first.locator(".feedback [role=status]");
  await page.waitForFunction((node) => node && !/^(Sending…)?$/.test(node.textContent), await said.elementHandle());
  const answer = await said.textContent();
  check(/^(Thanks for your feedback\.|Feedback not saved: .+)$/.test(answer), `the page shows the server's answer: ${answer}`);
  ok(`feedback sends the feedback frame and shows the answer (${answer})`);

  // --- stop an answer -----------------------------------------------------------------------
  await page.fill("#question", "Tell me slowly about refunds");
  await page.click("#send");
  await page.waitForFunction(() => {
    const bodies = document.querySelectorAll("#log .msg.bot.streaming .body");
    return bodies.length && /w3 /.test(bodies[bodies.length - 1].textContent);
  });
  check(await page.locator("#stop").isVisible(), "a stop button while streaming");
  await page.click("#stop");
  await lastBot().locator(".note", { hasText: "Stopped." }).waitFor();
  check(await page.locator("#stop").isHidden(), "no stop button after the end");
  check(!(await lastBot().textContent()).includes("w79"), "the stopped answer did not run to its end");
  check(sent("cancel").length === 1, "a cancel frame");
  ok("stopped an answer");

  // --- a new conversation -------------------------------------------------------------------
  await page.waitForFunction(() => document.querySelectorAll("#conversations li").length === 1);
  await page.click("#new-conversation");
  check((await page.locator("#log .msg").count()) === 0, "a new conversation starts empty");
  await page.fill("#question", "What does standard shipping cost?");
  await page.click("#send");
  await page.locator("#log .msg.bot:not(.streaming) .feedback").waitFor();
  await page.waitForFunction(() => document.querySelectorAll("#conversations li").length === 2);
  const asks = sent("ask");
  check(asks.at(-1).frame.conversation_id === null, "the new conversation's ask has no conversation id");
  check(asks[0].frame.conversation_id === null && asks[1].frame.conversation_id, "the second ask continued the first conversation");
  ok("started a second conversation");

  // --- reload: still logged in, both conversations listed (newest first) --------------------
  await page.reload();
  await page.waitForFunction(() => document.querySelectorAll("#conversations li").length === 2);
  const titles = await page.locator("#conversations .open span").allTextContents();
  check(/shipping/i.test(titles[0]) && /refunds/i.test(titles[1]), `newest first: ${titles}`);
  await page.waitForFunction(() => !document.getElementById("send").disabled);
  ok("after a reload both conversations are listed");

  // --- continue the first conversation, and drop the network mid-answer ---------------------
  await page.locator("#conversations .open", { hasText: "refunds" }).click();
  await page.locator("#log .msg.user", { hasText: "How long do refunds take?" }).waitFor();
  check((await page.locator("#log .msg.bot .note", { hasText: "Stopped." }).count()) === 1, "the stopped answer is stored as stopped");
  check((await page.locator("#conversations .open[aria-current=true]").textContent()).includes("refunds"), "the open conversation is marked");
  const socketsBefore = sockets.length;
  await page.fill("#question", "Please explain slowly when my refund arrives");
  await page.click("#send");
  await page.waitForFunction(() => {
    const bodies = document.querySelectorAll("#log .msg.bot.streaming .body");
    return bodies.length && /w5 /.test(bodies[bodies.length - 1].textContent);
  });
  const continued = sent("ask").at(-1).frame;
  const firstConversation = asks[1].frame.conversation_id;
  check(continued.conversation_id && continued.conversation_id === firstConversation, "the ask continues the first conversation");
  const { page: pageSide, server: serverSide } = sockets.at(-1);
  await pageSide.close({ code: 4000, reason: "network dropped by the test" });
  await serverSide.close();
  await lastBot().locator(".note", { hasText: /Connection lost|Reconnected|Resumed/ }).waitFor();
  await lastBot().locator(".note", { hasText: "Resumed after a reconnect." }).waitFor();
  await page.waitForFunction(() => {
    const last = [...document.querySelectorAll("#log .msg.bot")].pop();
    return !last.classList.contains("streaming") && last.querySelector(".feedback");
  });
  check(sockets.length > socketsBefore, "the page reconnected");
  const resume = sent("resume");
  check(resume.length === 1 && resume[0].frame.id === continued.id && resume[0].frame.after_seq >= 5, `a resume frame with the last seq (${JSON.stringify(resume)})`);
  const resumedText = await lastBot().locator(".body").textContent();
  const words = resumedText.trim().split(/\s+/);
  check(words.length === 80 && words.every((w, i) => w === `w${i}`), `every word once, in order: ${resumedText}`);
  ok("the answer resumed after the connection dropped, without gaps or repeats");

  // --- the in-band token renewal (the server runs with short-lived access tokens) ----------
  const renewed = () => {
    const perSocket = new Map();
    for (const f of sent("auth")) perSocket.set(f.socket, (perSocket.get(f.socket) || 0) + 1);
    return [...perSocket.values()].some((n) => n >= 2);
  };
  await until(renewed, "the access token renewed in-band with an auth frame", 40_000);
  const answersBefore = await bots.count();
  await page.fill("#question", "How long do refunds take?");
  await page.click("#send");
  await page.waitForFunction(
    (n) => document.querySelectorAll("#log .msg.bot").length === n + 1 && !document.querySelector("#log .msg.bot.streaming"),
    answersBefore,
  );
  check((await lastBot().locator(".feedback").count()) === 1, "the answer after the renewal completed");
  ok("the token was renewed on the open socket, which kept answering");

  // --- screenshots: desktop, then phone width with the list folded away ---------------------
  await lastBot().locator(".sources > summary").click();
  await lastBot().locator(".sources details summary").first().click();
  const scrollDown = () => page.evaluate(() => (document.getElementById("log").scrollTop = 1e9));
  await scrollDown();
  await page.screenshot({ path: path.join(shots, "page-desktop.png") });
  await page.setViewportSize({ width: 360, height: 720 });
  check(await page.locator("#sidebar").isHidden(), "the list folds away on a phone");
  check(await page.locator("#toggle-list").isVisible(), "a button opens the list on a phone");
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth);
  check(overflow <= 360, `no sideways scrolling at 360 px (${overflow})`);
  await scrollDown();
  await page.screenshot({ path: path.join(shots, "page-phone.png") });
  await page.click("#toggle-list");
  await page.locator("#sidebar").waitFor({ state: "visible" });
  await page.screenshot({ path: path.join(shots, "page-phone-list.png") });
  await page.keyboard.press("Escape");
  await page.locator("#sidebar").waitFor({ state: "hidden" });
  await page.setViewportSize({ width: 1100, height: 760 });
  ok(`screenshots taken${process.env.SCREENSHOTS_DIR ? ` into ${shots}` : ""}`);

  // --- a provider failure and a rate limit are explained -----------------------------------
  const settled = () =>
    page.waitForFunction(() => {
      const last = [...document.querySelectorAll("#log .msg.bot")].pop();
      return !last.classList.contains("streaming") && last.querySelector(".feedback, .note.bad");
    });
  await page.fill("#question", "How long do refunds take? (fail)");
  await page.click("#send");
  await settled();
  const failure = await lastBot().locator(".note.bad").first().textContent();
  check(/answering service is unavailable/.test(failure), `a provider failure reads clearly: ${failure}`);
  await page.waitForFunction(() => !document.getElementById("send").disabled);
  ok("a provider failure is explained and the page stays usable");
  // At most 8 asks a minute: some of these quick asks must be refused, with the retry time.
  let limited = null;
  for (let i = 0; i < 10 && !limited; i++) {
    await page.fill("#question", "How long do refunds take?");
    await page.click("#send");
    await settled();
    const note = lastBot().locator(".note.bad");
    if ((await note.count()) > 0) limited = await note.first().textContent();
  }
  check(/^Too many requests\. Try again in \d+ s\.$/.test(limited), `a rate limit names the retry time: ${limited}`);
  check(await page.locator("#send").isDisabled(), "Send waits out the rate limit");
  check(/^Wait \d+ s$/.test(await page.locator("#send").textContent()), "Send counts down");
  ok("a rate limit is explained with its retry time");

  // --- delete, with a confirmation ----------------------------------------------------------
  page.once("dialog", (dialog) => dialog.dismiss());
  await page.locator("#conversations li", { hasText: "shipping" }).locator(".delete").click();
  await page.waitForTimeout(300);
  check((await conversations.count()) === 2, "a dismissed confirmation deletes nothing");
  page.once("dialog", (dialog) => dialog.accept());
  await page.locator("#conversations li", { hasText: "shipping" }).locator(".delete").click();
  await page.waitForFunction(() => document.querySelectorAll("#conversations li").length === 1);
  ok("deleted a conversation after confirming");

  // --- log out: the refresh token's family is revoked ---------------------------------------
  const refresh = await page.evaluate(() => sessionStorage.getItem("support-chat.refresh"));
  check(refresh, "a refresh token while logged in");
  await page.click("#logout");
  await page.locator("#auth-form").waitFor();
  check((await page.evaluate(() => sessionStorage.length)) === 0, "nothing left in sessionStorage");
  const reuse = await fetch(`${origin}/api/token/refresh/`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ refresh }),
  });
  check(reuse.status === 401, `the refresh token no longer works after logout (${reuse.status})`);
  await page.reload();
  await page.locator("#auth-form").waitFor();
  check(await page.locator("#chat-view").isHidden(), "a reload after logout shows the login form");
  ok("logged out");

  check(problems.length === 0, `no CSP violations, page errors or third-party requests:\n  ${problems.join("\n  ")}`);
  ok("no CSP violations, page errors or third-party requests");
} catch (error) {
  console.error(`not ok - ${error.stack || error}`);
  if (problems.length) console.error(`problems seen:\n  ${problems.join("\n  ")}`);
  process.exitCode = 1;
} finally {
  clearTimeout(overall);
  await context.close().catch(() => {});
  fs.rmSync(profile, { recursive: true, force: true });
  if (!process.env.SCREENSHOTS_DIR) fs.rmSync(shots, { recursive: true, force: true });
}
