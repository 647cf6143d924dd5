// flashsale operator console. Vanilla JavaScript, no build step.
// Every value from the server reaches the page through textContent or an attribute set on an
// element made with createElement: product names and merchant ids are user input, so nothing
// here ever parses a string as HTML.
"use strict";

(() => {
  const KEY_STORAGE = "flashsale.console.apiKey";
  const TERMINAL = new Set(["COMPLETED", "FAILED", "CANCELLED"]);
  const PRODUCTS_PAGE = 20;
  const JOBS_SHOWN = 20;
  const SETTLEMENTS_PAGE = 50;
  const REFUSED = "The key was refused (401). Enter an operator key (a viewer's is enough to watch).";
  const MISSING = "This server needs an operator key (401). Enter one (a viewer's is enough to watch).";

  const $ = (id) => document.getElementById(id);

  // --- Small DOM and formatting helpers ---------------------------------------------------------

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  function setStatus(id, text) {
    const node = $(id);
    if (node.textContent !== text) node.textContent = text;
  }

  // Integer cents as units with two decimals, by integer arithmetic (no float rounding).
  function money(cents) {
    if (typeof cents !== "number" || !Number.isFinite(cents)) return "—";
    const sign = cents < 0 ? "-" : "";
    const abs = Math.abs(Math.trunc(cents));
    const units = Math.floor(abs / 100);
    const rest = abs % 100;
    return `${sign}${units.toLocaleString("en-US")}.${String(rest).padStart(2, "0")}`;
  }

  function count(n) {
    return typeof n === "number" ? n.toLocaleString("en-US") : "—";
  }

  // "2026-12-24T18:00:00Z" -> "2026-12-24 18:00:00" in a <time> element (the page says UTC).
  function timeEl(iso) {
    if (!iso) return el("span", "—", "muted");
    const node = el("time", String(iso).replace("T", " ").replace(/(\.\d+)?(Z|[+-]00:00)$/, ""));
    node.dateTime = iso;
    return node;
  }

  function progressBar(percent, label, text) {
    const wrap = el("div", null, "bar");
    const bar = document.createElement("progress");
    bar.max = 100;
    bar.value = percent;
    bar.setAttribute("aria-label", label);
    bar.setAttribute("aria-valuetext", text);
    wrap.append(bar, el("span", text, "bar-text"));
    return wrap;
  }

  function updateProgressBar(wrap, percent, label, text) {
    const bar = wrap.querySelector("progress");
    if (bar.value !== percent) bar.value = percent;
    bar.setAttribute("aria-label", label);
    bar.setAttribute("aria-valuetext", text);
    const span = wrap.querySelector(".bar-text");
    if (span.textContent !== text) span.textContent = text;
  }

  // Run `task` now and then every `ms` after it finishes (never two at once); skip hidden tabs.
  function every(ms, task) {
    const tick = async () => {
      if (!document.hidden) {
        try {
          await task();
        } catch (_) {
          // Each task shows its own errors; a failed tick must not stop the next one.
        }
      }
      setTimeout(tick, ms);
    };
    tick();
  }

  // --- The API key and every admin call ---------------------------------------------------------

  function apiKey() {
    return sessionStorage.getItem(KEY_STORAGE) || "";
  }

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  // The envelope's message, or the status when the body is not the envelope.
  async function errorMessage(response) {
    try {
      const body = await response.json();
      if (body && body.error && typeof body.error.message === "string") {
        return body.error.message;
      }
    } catch (_) {
      // Not JSON: fall through to the status line.
    }
    return `HTTP ${response.status}`;
  }

  // fetch() with the key as a Bearer header (never in the URL). A 401 shows the refusal.
  async function api(path, options = {}) {
    const headers = new Headers(options.headers || {});
    const key = apiKey();
    if (key) headers.set("Authorization", `Bearer ${key}`);
    const response = await fetch(path, { ...options, headers, cache: "no-store" });
    if (response.status === 401) {
      keyRefused();
      throw new ApiError(401, REFUSED);
    }
    return response;
  }

  async function apiJson(path, options) {
    const response = await api(path, options);
    if (!response.ok) throw new ApiError(response.status, await errorMessage(response));
    return response.json();
  }

  function keyRefused() {
    const message = apiKey() ? REFUSED : MISSING;
    const alert = $("key-alert");
    if (alert.hidden || alert.textContent !== message) {
      alert.textContent = message;
      alert.hidden = false;
    }
    stopAllWatchers();
  }

  // What was read with a key is not left on screen once the key is forgotten.
  function clearAdminData() {
    stopAllWatchers();
    jobs.clear();
    jobRows.clear();
    for (const id of ["products-body", "jobs-body", "settlements-body"]) $(id).replaceChildren();
    $("products-next").disabled = true;
    $("settlements-next").disabled = true;
  }

  function showKeyState() {
    setStatus(
      "key-status",
      apiKey()
        ? "A key is set for this tab (kept in sessionStorage until the tab closes or you forget it)."
        : "No key entered: admin data loads only on a server without operator keys.",
    );
  }

  function setupKey() {
    $("key-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const input = $("api-key");
      const key = input.value.trim();
      input.value = "";
      if (key) sessionStorage.setItem(KEY_STORAGE, key);
      else sessionStorage.removeItem(KEY_STORAGE);
      $("key-alert").hidden = true;
      showKeyState();
      refreshAdmin();
    });
    $("forget-key").addEventListener("click", () => {
      sessionStorage.removeItem(KEY_STORAGE);
      $("api-key").value = "";
      clearAdminData();
      showKeyState();
      $("api-key").focus();
    });
    showKeyState();
  }

  // --- Order rate from the service's own counters -----------------------------------------------

  const ORDERS_METRIC = "flashsale_orders_created_total";
  const RATE_WINDOW_S = 60;
  const rateSamples = []; // {t: seconds, v: counter value}

  // The sum of every sample of the counter in a Prometheus text exposition.
  function ordersCreated(text) {
    let total = 0;
    let found = false;
    for (const line of text.split("\n")) {
      if (!line.startsWith(ORDERS_METRIC)) continue;
      let rest = line.slice(ORDERS_METRIC.length);
      if (rest.startsWith("{")) {
        const end = rest.lastIndexOf("}");
        if (end < 0) continue;
        rest = rest.slice(end + 1);
      } else if (!/^\s/.test(rest)) {
        continue; // another metric whose name starts with this one
      }
      const value = Number.parseFloat(rest.trim().split(/\s+/)[0]);
      if (Number.isFinite(value)) {
        total += value;
        found = true;
      }
    }
    return found ? total : null;
  }

  async function refreshRate() {
    let text;
    try {
      const response = await api("/metrics");
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      text = await response.text();
    } catch (error) {
      setStatus("rate-status", `Metrics unavailable: ${error.message}`);
      return;
    }
    const value = ordersCreated(text);
    if (value === null) {
      setStatus("rate-status", `${ORDERS_METRIC} not found in /metrics`);
      return;
    }
    const now = performance.now() / 1000;
    const last = rateSamples[rateSamples.length - 1];
    if (last && value < last.v) rateSamples.length = 0; // counter reset: a server restarted
    rateSamples.push({ t: now, v: value });
    while (rateSamples.length > 2 && rateSamples[0].t < now - RATE_WINDOW_S) rateSamples.shift();
    const oldest = rateSamples[0];
    if (rateSamples.length < 2 || now - oldest.t <= 0) {
      setStatus("order-rate", "—");
    } else {
      const rate = (value - oldest.v) / (now - oldest.t);
      setStatus("order-rate", rate.toFixed(1));
    }
    setStatus("rate-status", `${count(value)} orders created since the server started`);
  }

  // --- Products ---------------------------------------------------------------------------------

  let productsOffset = 0;

  function saleWindow(product) {
    const starts = product.sale_starts_at;
    const ends = product.sale_ends_at;
    const cell = el("td");
    if (!starts && !ends) {
      cell.append(el("span", "always open", "muted"));
      return cell;
    }
    if (starts) cell.append(el("span", "from "), timeEl(starts));
    if (starts && ends) cell.append(el("br"));
    if (ends) cell.append(el("span", "until "), timeEl(ends));
    return cell;
  }

  function productRow(product) {
    const sold = product.units_sold;
    const total = sold + product.stock;
    // Integer percent, floored: 100% only when nothing is left.
    const percent = total > 0 ? Math.floor((sold * 100) / total) : 0;
    const row = el("tr");
    row.dataset.productId = String(product.id);
    const name = el("td", product.name, "name");
    const limit =
      product.max_per_buyer === null
        ? el("td", "no limit", "muted")
        : el("td", `${count(product.max_per_buyer)} per buyer`, "number");
    row.append(
      el("td", product.id, "number"),
      name,
      el("td", money(product.price), "number"),
      el("td", count(product.stock), "number stock"),
      el("td", count(sold), "number sold"),
      el("td"),
      limit,
      saleWindow(product),
    );
    row.children[5].append(
      progressBar(percent, `Sell-through of ${product.name}`, `${percent}% sold (${count(sold)} of ${count(total)})`),
    );
    return row;
  }

  async function refreshProducts() {
    let body;
    try {
      body = await apiJson(`/console/products?limit=${PRODUCTS_PAGE}&offset=${productsOffset}`);
    } catch (error) {
      setStatus("products-status", `Products could not be loaded: ${error.message}`);
      return;
    }
    $("products-body").replaceChildren(...body.products.map(productRow));
    const first = productsOffset + 1;
    const last = productsOffset + body.products.length;
    setStatus(
      "products-status",
      body.products.length
        ? `Products ${first}–${last}, updated ${new Date().toLocaleTimeString("en-GB")}`
        : productsOffset
          ? "No products on this page."
          : "No products yet.",
    );
    $("products-prev").disabled = productsOffset === 0;
    $("products-next").disabled = body.products.length < PRODUCTS_PAGE;
  }

  function setupProducts() {
    $("products-prev").addEventListener("click", () => {
      productsOffset = Math.max(0, productsOffset - PRODUCTS_PAGE);
      refreshProducts();
    });
    $("products-next").addEventListener("click", () => {
      productsOffset += PRODUCTS_PAGE;
      refreshProducts();
    });
  }

  // --- Settlement jobs --------------------------------------------------------------------------

  const jobs = new Map(); // job_id -> the newest job seen
  const jobRows = new Map(); // job_id -> <tr>
  const watchers = new Map(); // job_id -> AbortController of its stream or poll loop
  const STATUS_RANK = { QUEUED: 0, RUNNING: 1, COMPLETED: 2, FAILED: 2, CANCELLED: 2 };

  // Whether `next` is at least as new as `old`: a list fetched before a stream event must not
  // move a job back. updated_at decides when it differs; else the status, then the progress.
  function isNewer(old, next) {
    if (!old) return true;
    const before = Date.parse(old.updated_at);
    const after = Date.parse(next.updated_at);
    if (Number.isFinite(before) && Number.isFinite(after) && before !== after) return after > before;
    const a = STATUS_RANK[old.status] ?? 0;
    const b = STATUS_RANK[next.status] ?? 0;
    if (a !== b) return b > a;
    // A finished job changes only when its report expires: take the server's word.
    return TERMINAL.has(next.status) || (next.processed ?? 0) >= (old.processed ?? 0);
  }

  function jobPercent(job) {
    return Math.max(0, Math.min(100, Math.floor(job.progress || 0)));
  }

  function jobProgressText(job) {
    const done = job.total === null ? count(job.processed) : `${count(job.processed)}/${count(job.total)}`;
    return `${jobPercent(job)}% · ${done}`;
  }

  function actionKind(job) {
    if (job.status === "QUEUED" || job.status === "RUNNING") return "cancel";
    if (job.status === "COMPLETED") return job.download_url ? "download" : "expired";
    if (job.status === "FAILED") return `failed:${job.error || ""}`;
    return "none";
  }

  function actionCell(job) {
    const kind = actionKind(job);
    const cell = el("td", null, kind.startsWith("failed") ? "error" : "");
    cell.dataset.kind = kind;
    if (kind === "cancel") {
      const button = el("button", "Cancel", "danger");
      button.type = "button";
      button.setAttribute("aria-label", `Cancel job ${job.job_id}`);
      button.addEventListener("click", () => cancelJob(job.job_id, button));
      cell.append(button);
    } else if (kind === "download") {
      const button = el("button", "Download CSV");
      button.type = "button";
      button.setAttribute("aria-label", `Download the CSV of job ${job.job_id}`);
      button.addEventListener("click", () => downloadJob(job.job_id, button));
      cell.append(button);
    } else if (kind === "expired") {
      cell.append(el("span", "report expired", "muted"));
    } else if (job.status === "FAILED") {
      cell.append(el("span", job.error ? `failed: ${job.error}` : "failed"));
    }
    return cell;
  }

  // Columns: job, status, progress, actions, days, created (what an operator acts on first).
  function jobRow(job) {
    const row = el("tr");
    row.dataset.jobId = job.job_id;
    const id = el("td");
    id.append(el("code", job.job_id));
    const progress = el("td");
    progress.append(progressBar(jobPercent(job), `Progress of job ${job.job_id}`, jobProgressText(job)));
    const days = el("td", null, "days");
    days.append(el("span", `${job.from} →`), " ", el("span", job.to));
    const created = el("td");
    created.append(timeEl(job.created_at));
    row.append(id, el("td", job.status, "job-status"), progress, actionCell(job), days, created);
    return row;
  }

  // Update the row in place: a focused Cancel button stays focused while progress moves.
  function updateJobRow(row, job) {
    const status = row.children[1];
    if (status.textContent !== job.status) status.textContent = job.status;
    updateProgressBar(row.children[2].firstChild, jobPercent(job), `Progress of job ${job.job_id}`, jobProgressText(job));
    if (row.children[3].dataset.kind !== actionKind(job)) row.children[3].replaceWith(actionCell(job));
  }

  function showJob(job) {
    if (!isNewer(jobs.get(job.job_id), job)) return;
    jobs.set(job.job_id, job);
    const row = jobRows.get(job.job_id);
    if (row) updateJobRow(row, job);
    if (TERMINAL.has(job.status)) stopWatching(job.job_id);
  }

  function renderJobList(list) {
    const body = $("jobs-body");
    const shown = new Set(list.map((job) => job.job_id));
    for (const id of [...jobRows.keys()]) {
      if (!shown.has(id)) {
        jobRows.get(id).remove();
        jobRows.delete(id);
        jobs.delete(id);
        stopWatching(id);
      }
    }
    list.forEach((job, index) => {
      let row = jobRows.get(job.job_id);
      if (!row) {
        jobs.set(job.job_id, job);
        row = jobRow(job);
        jobRows.set(job.job_id, row);
      } else {
        showJob(job);
      }
      // Move a row only when it is out of place (moving a node drops its focus).
      if (body.children[index] !== row) body.insertBefore(row, body.children[index] || null);
      const current = jobs.get(job.job_id);
      if (!TERMINAL.has(current.status)) watch(current.job_id);
    });
  }

  async function refreshJobs() {
    let body;
    try {
      body = await apiJson(`/jobs?limit=${JOBS_SHOWN}`);
    } catch (error) {
      setStatus("jobs-status", `Jobs could not be loaded: ${error.message}`);
      return;
    }
    renderJobList(body.jobs);
    if (!body.jobs.length) setStatus("jobs-status", "No jobs yet.");
    else if ($("jobs-status").textContent.startsWith("Jobs could not")) setStatus("jobs-status", "");
  }

  // --- Live job progress: Server-Sent Events read with fetch, or polling ------------------------

  function stopWatching(id) {
    const controller = watchers.get(id);
    if (controller) {
      controller.abort();
      watchers.delete(id);
    }
  }

  function stopAllWatchers() {
    for (const id of [...watchers.keys()]) stopWatching(id);
  }

  function watch(id) {
    if (watchers.has(id)) return;
    const controller = new AbortController();
    watchers.set(id, controller);
    follow(id, controller.signal)
      .catch(() => {})
      .finally(() => {
        if (watchers.get(id) === controller) watchers.delete(id);
      });
  }

  async function follow(id, signal) {
    const path = `/jobs/${encodeURIComponent(id)}`;
    // EventSource cannot send the Authorization header: read the stream with fetch instead.
    if (await streamJob(`${path}/events`, signal)) return;
    // No stream (404 before the server has one, 503 when it has too many): poll every 2 s.
    while (!signal.aborted) {
      const response = await api(path, { signal });
      if (response.status === 404) {
        jobRows.get(id)?.remove();
        jobRows.delete(id);
        jobs.delete(id);
        return;
      }
      if (response.ok) {
        const job = await response.json();
        showJob(job);
        if (TERMINAL.has(job.status)) return;
      }
      await sleep(2000, signal);
    }
  }

  function sleep(ms, signal) {
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      signal.addEventListener("abort", () => {
        clearTimeout(timer);
        resolve();
      }, { once: true });
    });
  }

  // Follow one job's event stream; true once it showed a terminal status, false when the
  // caller should poll instead (no stream here, too many streams, or it ended early).
  async function streamJob(path, signal) {
    const response = await api(path, { signal, headers: { Accept: "text/event-stream" } });
    const type = response.headers.get("Content-Type") || "";
    if (!response.ok || !response.body || !type.startsWith("text/event-stream")) {
      if (response.body) response.body.cancel().catch(() => {});
      return false;
    }
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    const parser = sseParser();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return false;
        for (const data of parser(value)) {
          let job;
          try {
            job = JSON.parse(data);
          } catch (_) {
            continue; // not a job: ignore it, as SSE clients ignore what they do not know
          }
          showJob(job);
          if (TERMINAL.has(job.status)) return true;
        }
      }
    } finally {
      reader.cancel().catch(() => {});
    }
  }

  // A parser for text/event-stream fed chunk by chunk (chunks may split lines and events): it
  // returns the data of each event completed so far. A blank line ends an event; several
  // `data:` lines join with "\n"; lines starting with ":" are comments (heartbeats).
  function sseParser() {
    let buffer = "";
    let data = [];
    return (chunk) => {
      buffer += chunk;
      const events = [];
      const lines = buffer.split(/\r\n|\r|\n/);
      buffer = lines.pop(); // the last piece may be an incomplete line
      for (const line of lines) {
        if (line === "") {
          if (data.length) events.push(data.join("\n"));
          data = [];
        } else if (line.startsWith(":")) {
          continue;
        } else if (line.startsWith("data")) {
          const colon = line.indexOf(":");
          if (colon === -1) data.push("");
          else if (line.slice(0, colon) === "data") {
            const value = line.slice(colon + 1);
            data.push(value.startsWith(" ") ? value.slice(1) : value);
          }
        }
      }
      return events;
    };
  }

  async function cancelJob(id, button) {
    button.disabled = true;
    try {
      await apiJson(`/jobs/${encodeURIComponent(id)}/cancel`, { method: "POST" });
      setStatus("jobs-status", `Cancellation of ${id} requested.`);
      showJob(await apiJson(`/jobs/${encodeURIComponent(id)}`));
    } catch (error) {
      setStatus("jobs-status", `Could not cancel ${id}: ${error.message}`);
      button.disabled = false;
    }
  }

  // The download needs the Bearer header, so a plain link cannot do it: fetch the CSV and
  // save it from a Blob object URL.
  async function downloadJob(id, button) {
    const job = jobs.get(id);
    if (!job || !job.download_url) return;
    button.disabled = true;
    try {
      const response = await api(job.download_url);
      if (response.status === 410) {
        // Deleted by the retention sweep since the list was read: show it as expired.
        showJob({ ...job, download_url: undefined });
        setStatus("jobs-status", `The report of ${id} has expired.`);
        return;
      }
      if (!response.ok) throw new ApiError(response.status, await errorMessage(response));
      const url = URL.createObjectURL(await response.blob());
      const link = document.createElement("a");
      link.href = url;
      link.download = `${id}.csv`;
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
      setStatus("jobs-status", `Downloaded ${id}.csv.`);
    } catch (error) {
      setStatus("jobs-status", `Could not download ${id}: ${error.message}`);
    } finally {
      button.disabled = false;
    }
  }

  function isoDay(date) {
    return date.toISOString().slice(0, 10);
  }

  function setupJobs() {
    // Default range: last month, in UTC.
    const now = new Date();
    const first = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() - 1, 1));
    const last = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), 0));
    if (!$("job-from").value) $("job-from").value = isoDay(first);
    if (!$("job-to").value) $("job-to").value = isoDay(last);
    $("job-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const body = { from: $("job-from").value, to: $("job-to").value };
      const submit = event.submitter || $("job-form").querySelector("button");
      submit.disabled = true;
      try {
        const job = await apiJson("/jobs/settlement", {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify(body),
        });
        setStatus("jobs-status", `Job ${job.job_id} started (${job.status}).`);
        await refreshJobs();
      } catch (error) {
        setStatus("jobs-status", `The job was not started: ${error.message}`);
      } finally {
        submit.disabled = false;
      }
    });
  }

  // --- Settlements (keyset pages) ---------------------------------------------------------------

  const settlementsPage = { cursor: null, next: null, number: 1 };

  function settlementRow(row) {
    const tr = el("tr");
    const job = el("td");
    job.append(el("code", row.job_id));
    tr.append(
      el("td", row.merchant_id, "name merchant"),
      el("td", row.date),
      el("td", money(row.gross_cents), "number"),
      el("td", money(row.fee_cents), "number"),
      el("td", money(row.net_cents), "number"),
      el("td", count(row.txn_count), "number"),
      job,
      el("td"),
    );
    tr.children[7].append(timeEl(row.generated_at));
    return tr;
  }

  async function loadSettlements() {
    const query = new URLSearchParams({ limit: String(SETTLEMENTS_PAGE) });
    const merchant = $("settlements-merchant").value.trim();
    if (merchant) query.set("merchant_id", merchant);
    if ($("settlements-from").value) query.set("from", $("settlements-from").value);
    if ($("settlements-to").value) query.set("to", $("settlements-to").value);
    if (settlementsPage.cursor) query.set("cursor", settlementsPage.cursor);
    let body;
    try {
      const response = await api(`/settlements?${query}`);
      if (response.status === 404) {
        $("settlements-body").replaceChildren();
        $("settlements-next").disabled = true;
        setStatus("settlements-status", "This server has no settlements endpoint yet (404).");
        return;
      }
      if (!response.ok) throw new ApiError(response.status, await errorMessage(response));
      body = await response.json();
    } catch (error) {
      setStatus("settlements-status", `Settlements could not be loaded: ${error.message}`);
      return;
    }
    $("settlements-body").replaceChildren(...body.settlements.map(settlementRow));
    settlementsPage.next = body.next_cursor || null;
    $("settlements-next").disabled = settlementsPage.next === null;
    $("settlements-first").disabled = settlementsPage.cursor === null;
    setStatus(
      "settlements-status",
      body.settlements.length
        ? `Page ${settlementsPage.number}: ${body.settlements.length} rows${settlementsPage.next ? "" : " (last page)"}.`
        : "No settlements match.",
    );
  }

  function setupSettlements() {
    $("settlements-form").addEventListener("submit", (event) => {
      event.preventDefault();
      Object.assign(settlementsPage, { cursor: null, next: null, number: 1 });
      loadSettlements();
    });
    $("settlements-first").addEventListener("click", () => {
      Object.assign(settlementsPage, { cursor: null, next: null, number: 1 });
      loadSettlements();
    });
    $("settlements-next").addEventListener("click", () => {
      if (!settlementsPage.next) return;
      settlementsPage.cursor = settlementsPage.next;
      settlementsPage.number += 1;
      loadSettlements();
    });
  }

  // --- Start ------------------------------------------------------------------------------------

  function refreshAdmin() {
    refreshProducts();
    refreshJobs();
    Object.assign(settlementsPage, { cursor: null, next: null, number: 1 });
    loadSettlements();
  }

  function start() {
    setupKey();
    setupProducts();
    setupJobs();
    setupSettlements();
    loadSettlements();
    every(3000, refreshProducts);
    every(5000, refreshJobs);
    every(5000, refreshRate);
  }

  start();
})();
