#!/usr/bin/env node
// Drive a SMART App Launch in headless Debian chromium (playwright-core, no browser download).
//
//   node tests/js/drive_smart_app.mjs '<json>'      (or  @path/to/args.json)
//
// It opens `url` (the app's launch page, or an authorize URL), then on every page it lands on fills
// whatever SMART authorization-server form it finds (login, one-time code, patient picker, consent)
// and submits it, until one of:
//   - the app page sets `data-status` on the result element (#result): "ok" -> success, else failure;
//   - the browser navigates to a URL starting with `stopAt` (reported as `stoppedAt`; the request does
//     go out, so point it at a port where nothing listens, or at any page): success. For driving
//     non-browser clients (Python fhirclient): open its authorize_url with stopAt = its redirect_uri,
//     then feed stoppedAt to the client. Avoid ports chromium refuses (ERR_UNSAFE_PORT: 1, 9, 6000…).
//   - a form shows up again after being submitted (wrong password, rejected code...), a page with
//     nothing to fill and no result, or the timeout: failure.
//
// Args (JSON object):
//   url            string, required   page to open first
//   username       string             login form (input name=username)
//   password       string             login form (input name=password)
//   otp            string             one-time code (input name=otp), on the login page or its own page
//   patient        string             patient to pick in the picker (radio name=patient value=<id>);
//                                     when absent, the picker's pre-checked (or first) radio is kept
//   uncheck        string[]           consent checkboxes (name=scope) to untick, by value (the scope)
//   check          string[]           consent checkboxes to tick, by value
//   decision       "allow" | "deny"   consent button (name=action or decision) to press; default "allow"
//   stopAt         string             URL prefix to stop at (see above)
//   timeoutMs      number             overall deadline, default 30000
//   stuckMs        number             give up on a page (not the app's) that neither changes nor has a
//                                     form to fill for that long, default 10000
//   screenshot     string             write a PNG of the last page there (debugging)
//   chromium       string             browser executable; default $CHROMIUM_PATH or /usr/bin/chromium
//   ignoreHTTPSErrors boolean         default false
//   disableWebSecurity boolean        launch with --disable-web-security (no CORS); default false
//   locale         string             browser locale (navigator.language and Accept-Language), e.g. "fr-FR";
//                                     default: the browser's own (en-US)
//
// Output: one JSON object on stdout:
//   { ok, status: "ok"|"stopped"|"app-error"|"form-repeated"|"stuck"|"timeout"|"error",
//     finalUrl, resultStatus, resultText, result (resultText parsed as JSON when it is JSON),
//     stoppedAt, steps: [{url, lang, title, filled: [...], submitted}], consoleErrors: [...],
//     httpErrors: [{url, status, method}], failedRequests: [{url, error}], pageText (on failure), error }
// Exit code: 0 when ok, 1 on a failure the JSON describes, 2 on bad arguments or a browser that
// would not start.

import { readFileSync, existsSync } from "node:fs";
import { chromium } from "playwright-core";

// ---- Selectors of the authorization server's pages: adjust here. ----
const SELECTORS = {
  username: 'input[name="username"]',
  password: 'input[name="password"]',
  otp: 'input[name="otp"], input[name="code"]',
  patientRadio: 'input[type="radio"][name="patient"]',
  scopeCheckbox: 'input[type="checkbox"][name="scope"]',
  decisionButton: (value) =>
    `button[name="action"][value="${value}"], button[name="decision"][value="${value}"], ` +
    `input[type="submit"][name="decision"][value="${value}"]`,
  submit: 'button[type="submit"], input[type="submit"], button:not([type])',
  // The app page's result element; the app sets its data-status ("ok" or "error") when done.
  result: "#result",
};
const POLL_MS = 100;

function fail(code, message) {
  process.stdout.write(JSON.stringify({ ok: false, status: "error", error: message }) + "\n");
  process.exit(code);
}

function parseArgs() {
  const raw = process.argv[2];
  if (!raw) fail(2, "usage: drive_smart_app.mjs '<json args>' | @file.json");
  let args;
  try {
    args = JSON.parse(raw.startsWith("@") ? readFileSync(raw.slice(1), "utf8") : raw);
  } catch (e) {
    fail(2, `bad JSON arguments: ${e.message}`);
  }
  if (!args || typeof args.url !== "string") fail(2, "args.url (string) is required");
  return {
    decision: "allow",
    timeoutMs: 30000,
    stuckMs: 10000,
    uncheck: [],
    check: [],
    ...args,
  };
}

function defaultChromium() {
  if (process.env.CHROMIUM_PATH) return process.env.CHROMIUM_PATH;
  for (const p of ["/usr/bin/chromium", "/usr/lib/chromium/chromium", "/usr/bin/chromium-browser"]) {
    if (existsSync(p)) return p;
  }
  return "/usr/bin/chromium";
}

async function main() {
  const args = parseArgs();
  const deadline = Date.now() + args.timeoutMs;
  const out = {
    ok: false,
    status: "timeout",
    finalUrl: null,
    resultStatus: null,
    resultText: null,
    result: null,
    stoppedAt: null,
    steps: [],
    consoleErrors: [],
    httpErrors: [],
    failedRequests: [],
  };

  const launchArgs = [
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-features=Translate,OptimizationHints,MediaRouter",
  ];
  if (args.disableWebSecurity) launchArgs.push("--disable-web-security");
  let browser;
  try {
    browser = await chromium.launch({
      executablePath: args.chromium || defaultChromium(),
      headless: true,
      // The setuid/namespace sandbox cannot start as root (and often not in containers).
      chromiumSandbox: false,
      args: launchArgs,
      timeout: Math.max(5000, Math.min(30000, args.timeoutMs)),
    });
  } catch (e) {
    fail(2, `chromium did not start: ${e.message}`);
  }

  let page = null;
  try {
    const context = await browser.newContext({
      ignoreHTTPSErrors: !!args.ignoreHTTPSErrors,
      ...(args.locale ? { locale: args.locale } : {}),
    });
    page = await context.newPage();
    page.setDefaultTimeout(Math.max(1000, args.timeoutMs));

    // Browsers ask every origin for /favicon.ico: its 404 is no error of the flow.
    const isFavicon = (url) => /\/favicon\.ico(\?|$)/.test(url || "");
    page.on("console", (msg) => {
      if (msg.type() === "error" && !isFavicon(msg.location()?.url)) out.consoleErrors.push(msg.text());
    });
    page.on("pageerror", (err) => out.consoleErrors.push(`pageerror: ${err.message}`));
    page.on("response", (res) => {
      if (res.status() >= 400 && !isFavicon(res.url())) out.httpErrors.push({ url: res.url(), status: res.status(), method: res.request().method() });
    });
    page.on("requestfailed", (req) => {
      if (args.stopAt && req.url().startsWith(args.stopAt)) return;
      out.failedRequests.push({ url: req.url(), error: req.failure()?.errorText ?? "" });
    });

    // stopAt: note the navigation (also one reached through a server's redirect) to the stop URL.
    // No page.route() here, on purpose: with request interception on, Playwright answers CORS
    // preflights itself (allowing everything), so the server's own CORS would go untested.
    if (args.stopAt) {
      page.on("request", (req) => {
        if (!out.stoppedAt && req.isNavigationRequest() && req.frame() === page.mainFrame() && req.url().startsWith(args.stopAt)) {
          out.stoppedAt = req.url();
        }
      });
    }

    // Each main-frame navigation is a new document; handle each document's forms once.
    let docId = 0;
    page.on("framenavigated", (frame) => {
      if (frame === page.mainFrame()) docId += 1;
    });

    await page.goto(args.url, { waitUntil: "domcontentloaded" }).catch((e) => {
      if (!out.stoppedAt) throw e;
    });

    let handledDoc = -1;
    let lastDoc = docId;
    let docSince = Date.now();
    const seenForms = new Set(); // signatures of the forms submitted so far
    while (true) {
      if (out.stoppedAt) {
        out.ok = true;
        out.status = "stopped";
        break;
      }
      if (Date.now() > deadline) {
        out.status = "timeout";
        out.error = `timed out after ${args.timeoutMs} ms`;
        break;
      }
      if (docId !== lastDoc) {
        lastDoc = docId;
        docSince = Date.now();
      }
      let state;
      try {
        state = await inspect(page);
      } catch {
        // Execution context destroyed by a navigation: look again.
        await sleep(POLL_MS);
        continue;
      }
      if (state.resultStatus) {
        out.resultStatus = state.resultStatus;
        out.resultText = state.resultText;
        try {
          out.result = JSON.parse(state.resultText);
        } catch {
          out.result = null;
        }
        out.ok = state.resultStatus === "ok";
        out.status = out.ok ? "ok" : "app-error";
        break;
      }
      if (state.fields.length > 0 && handledDoc !== docId && state.readyState !== "loading") {
        const signature = `${new URL(page.url()).pathname}|${state.fields.join(",")}`;
        if (seenForms.has(signature)) {
          out.status = "form-repeated";
          out.error = `the same form came back after being submitted (${state.fields.join(", ")})`;
          break;
        }
        seenForms.add(signature);
        handledDoc = docId;
        out.steps.push(await fillAndSubmit(page, state, args));
        docSince = Date.now();
        continue;
      }
      // The app page waits (up to the deadline) for its result; any other page that neither changes
      // nor offers a form for stuckMs is an error page of the server, or a submit that went nowhere.
      if (!state.hasResultElement && state.readyState === "complete" && Date.now() - docSince > args.stuckMs) {
        out.status = "stuck";
        out.error =
          handledDoc === docId
            ? `the form was submitted but no new page came within ${args.stuckMs} ms`
            : `a page with no form to fill and no app result for ${args.stuckMs} ms`;
        break;
      }
      await sleep(POLL_MS);
    }

    out.finalUrl = page.url();
    if (!out.ok) out.pageText = await page.evaluate(() => document.body?.innerText ?? "").catch(() => null);
    if (args.screenshot) await page.screenshot({ path: args.screenshot, fullPage: true }).catch(() => {});
  } catch (e) {
    out.ok = false;
    out.status = "error";
    out.error = String(e.message).replace(/\u001b\[[0-9;]*m/g, "");
    if (page) {
      out.finalUrl = page.url();
      out.pageText = await page.evaluate(() => document.body?.innerText ?? "").catch(() => null);
    }
  } finally {
    await browser.close().catch(() => {});
  }
  process.stdout.write(JSON.stringify(out) + "\n");
  process.exit(out.ok ? 0 : 1);
}

async function inspect(page) {
  return page.evaluate((S) => {
    const present = (sel) => document.querySelector(sel) !== null;
    const fields = [];
    for (const k of ["username", "password", "otp", "patientRadio", "scopeCheckbox"]) if (present(S[k])) fields.push(k);
    if (present('button[name="action"], button[name="decision"], input[type="submit"][name="decision"]')) fields.push("decision");
    const result = document.querySelector(S.result);
    return {
      readyState: document.readyState,
      fields,
      lang: document.documentElement.lang || null,
      title: document.title,
      hasResultElement: result !== null,
      resultStatus: result?.getAttribute("data-status") || null,
      resultText: result ? result.textContent : null,
    };
  }, { ...SELECTORS, decisionButton: undefined });
}

async function fillAndSubmit(page, state, args) {
  const step = { url: page.url(), lang: state.lang, title: state.title, filled: [], submitted: null };
  const has = (k) => state.fields.includes(k);
  let anchor = null; // an element inside the form to submit
  if (has("username")) {
    if (args.username === undefined) throw new Error("login form shown but no username given");
    await page.fill(SELECTORS.username, args.username);
    step.filled.push("username");
    anchor ??= SELECTORS.username;
  }
  if (has("password")) {
    if (args.password === undefined) throw new Error("login form shown but no password given");
    await page.fill(SELECTORS.password, args.password);
    step.filled.push("password");
    anchor ??= SELECTORS.password;
  }
  if (has("otp")) {
    if (args.otp === undefined) throw new Error("one-time code asked for but no otp given");
    await page.fill(SELECTORS.otp, String(args.otp));
    step.filled.push("otp");
    anchor ??= SELECTORS.otp;
  }
  if (has("patientRadio")) {
    if (args.patient !== undefined) {
      const radio = `${SELECTORS.patientRadio}[value="${cssEscape(args.patient)}"]`;
      if ((await page.$(radio)) === null) throw new Error(`patient ${args.patient} is not offered by the picker`);
      await page.check(radio);
      step.filled.push(`patient=${args.patient}`);
    } else {
      const chosen = await page.evaluate((sel) => {
        const radios = [...document.querySelectorAll(sel)];
        const r = radios.find((x) => x.checked) ?? radios[0];
        r.checked = true;
        return r.value;
      }, SELECTORS.patientRadio);
      step.filled.push(`patient=${chosen} (default)`);
    }
    anchor ??= SELECTORS.patientRadio;
  }
  if (has("scopeCheckbox")) {
    const boxes = await page.$$eval(SELECTORS.scopeCheckbox, (els) => els.map((e) => ({ value: e.value, checked: e.checked })));
    const offered = new Set(boxes.map((b) => b.value));
    for (const v of [...args.uncheck, ...args.check]) {
      if (!offered.has(v)) throw new Error(`consent offers no scope checkbox "${v}" (offered: ${[...offered].join(" ")})`);
    }
    for (const v of args.uncheck) {
      await page.uncheck(`${SELECTORS.scopeCheckbox}[value="${cssEscape(v)}"]`);
      step.filled.push(`-${v}`);
    }
    for (const v of args.check) {
      await page.check(`${SELECTORS.scopeCheckbox}[value="${cssEscape(v)}"]`);
      step.filled.push(`+${v}`);
    }
    step.scopesOffered = boxes;
    anchor ??= SELECTORS.scopeCheckbox;
  }

  // Submit: the consent decision button when there is one, else the form's own submit button.
  const decision = SELECTORS.decisionButton(cssEscape(args.decision));
  if (has("decision")) {
    if ((await page.$(decision)) === null) throw new Error(`no consent button decision=${args.decision}`);
    await page.click(decision, { noWaitAfter: true });
    step.submitted = `decision=${args.decision}`;
  } else {
    const form = anchor ? page.locator(anchor).first().locator("xpath=ancestor::form[1]") : page.locator("form").first();
    const button = form.locator(SELECTORS.submit).first();
    if ((await button.count()) > 0) {
      await button.click({ noWaitAfter: true });
      step.submitted = "submit button";
    } else {
      await form.evaluate((f) => f.requestSubmit());
      step.submitted = "form.requestSubmit()";
    }
  }
  return step;
}

function cssEscape(s) {
  return String(s).replace(/["\\]/g, "\\$&");
}

function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

main().catch((e) => fail(1, e?.stack || String(e)));
