// The leakscan dashboard (docs/ARCHITECTURE.md, "The dashboard page").
// It reads the REST API every client uses, signed in with a session
// cookie; the DOM is built with textContent only (paths, branch names and
// snippets come from repositories and are never parsed as HTML).
"use strict";

const BASE = location.pathname.replace(/\/dashboard\/?$/, "");
const SECURITY = "/rest/security/latest";
const BARS = [
  ["secure", "Secure"], ["vulnerable", "Vulnerable"], ["notScanned", "Not scanned"],
  ["outdated", "Outdated"], ["scanning", "Scanning"], ["failed", "Failed"],
];
const CLASS = { secure: "secure", vulnerable: "vulnerable", notScanned: "not-scanned",
  outdated: "outdated", scanning: "scanning", failed: "failed" };

let user = null;
const streams = new Map();

class HttpError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(method, path, body) {
  const options = {
    method,
    credentials: "same-origin",
    headers: { "Accept": "application/json", "X-Requested-With": "XMLHttpRequest" },
  };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(BASE + path, options);
  const text = await response.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch (_) { json = null; }
  if (!response.ok) {
    const message = json && json.errors && json.errors[0] ? json.errors[0].message : response.statusText;
    throw new HttpError(response.status, message);
  }
  return json;
}

function h(tag, attributes, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (value === false || value === null || value === undefined) continue;
    if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else element.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

const enc = encodeURIComponent;
const link = (text, hash, attributes) => h("a", Object.assign({ href: hash }, attributes || {}), text);

function bar(counts) {
  const total = BARS.reduce((sum, [key]) => sum + (counts[key] || 0), 0);
  const element = h("div", { class: "bar", role: "img",
    "aria-label": BARS.map(([key, label]) => `${label} ${counts[key] || 0}`).join(", ") });
  for (const [key, label] of BARS) {
    const count = counts[key] || 0;
    if (!count) continue;
    const segment = h("span", { class: CLASS[key], title: `${label}: ${count}` });
    // CSSOM, not a style attribute: allowed by the page's CSP.
    segment.style.flexGrow = String(count);
    segment.style.flexBasis = `${(100 * count) / Math.max(total, 1)}%`;
    element.append(segment);
  }
  return element;
}

function countCells(counts) {
  return BARS.map(([key]) => h("td", { class: `num count-${CLASS[key]}` }, counts[key] || 0));
}

function legend() {
  return h("div", { class: "legend" },
    BARS.map(([key, label]) => h("span", {}, h("i", { class: CLASS[key] }), label)));
}

function countHeaders() {
  return BARS.map(([, label]) => h("th", {}, label));
}

function crumbs(parts) {
  const nav = document.getElementById("crumbs");
  nav.replaceChildren(...parts.map(([text, hash]) => link(text, hash)));
}

function show(...nodes) {
  document.getElementById("view").replaceChildren(...nodes.filter((node) => node));
}

function failure(error) {
  if (error.status === 401) { signedOut(); return; }
  show(h("p", { class: "error", role: "alert" }, error.message));
}

// ---- running jobs, live over Server-Sent Events ----

function watchJob(job) {
  if (streams.has(job.scanKey)) return;
  const list = document.getElementById("job-list");
  const progress = h("progress", { max: "100", value: String(job.progress || 0) });
  const percent = h("span", { class: "percent" }, `${job.progress || 0} %`);
  const state = h("span", { class: "state" }, job.state);
  const what = [job.scope, job.project, job.repository, job.branch].filter(Boolean).join(" ");
  const item = h("li", { class: "job", "data-scan-key": job.scanKey },
    h("code", {}, job.scanKey), h("span", {}, what), progress, percent, state);
  list.append(item);
  document.getElementById("jobs").hidden = false;
  const source = new EventSource(`${BASE}${SECURITY}/jobs/${enc(job.scanKey)}/events`);
  streams.set(job.scanKey, source);
  const update = (event) => {
    const view = JSON.parse(event.data);
    progress.value = view.progress;
    percent.textContent = `${view.progress} %`;
    state.textContent = view.state;
  };
  source.addEventListener("progress", update);
  source.addEventListener("end", (event) => {
    update(event);
    source.close();
    streams.delete(job.scanKey);
    item.classList.add("ended");
    route();
  });
  source.onerror = () => {
    // The gateway restarted or drained: the job goes on; poll it once.
    source.close();
    streams.delete(job.scanKey);
    setTimeout(() => api("GET", `${SECURITY}/jobs/${enc(job.scanKey)}`)
      .then((view) => { item.remove(); if (!["done", "cancelled", "failed"].includes(view.state)) watchJob(view); else update({ data: JSON.stringify(view) }); })
      .catch(() => {}), 2000);
  };
}

async function loadJobs() {
  const page = await api("GET", `${SECURITY}/jobs?limit=25`);
  for (const job of page.values || []) {
    if (job.state === "queued" || job.state === "running") watchJob(job);
  }
}

async function rescan(path) {
  const job = await api("PUT", path);
  watchJob(job);
}

function rescanButton(label, path) {
  return h("button", { type: "button", class: "rescan", onclick: (event) => {
    event.target.disabled = true;
    rescan(path).catch(failure).finally(() => { event.target.disabled = false; });
  } }, label);
}

// ---- views ----

async function overview() {
  crumbs([]);
  const projects = [];
  let start = 0;
  for (;;) {
    const page = await api("GET", `/rest/api/latest/projects?start=${start}&limit=100`);
    projects.push(...page.values);
    if (page.isLastPage) break;
    start = page.nextPageStart;
  }
  const dashboards = await Promise.all(projects.map((project) =>
    api("GET", `${SECURITY}/dashboard/projects/${enc(project.key)}`)));
  const rows = dashboards.map((dashboard) => h("tr", { "data-project": dashboard.project },
    h("td", {}, link(dashboard.project, `#/projects/${enc(dashboard.project)}`, { class: "project-link" })),
    h("td", { class: `status ${dashboard.status.replace(/ /g, "-")}` }, dashboard.status),
    h("td", {}, bar(dashboard.counts)),
    countCells(dashboard.counts),
    h("td", { class: "num hook-blocked" }, dashboard.hook.blocked),
    h("td", { class: "num hook-bypassed" }, dashboard.hook.bypassed)));
  const actions = h("div", { class: "actions" });
  if (user.security) {
    actions.append(rescanButton("Rescan everything", `${SECURITY}/status/total_rescan`));
  }
  show(h("h1", {}, "Projects"), actions, legend(),
    projects.length === 0 ? h("p", { class: "empty" }, "No project you may read.") :
      h("table", { class: "projects" },
        h("thead", {}, h("tr", {}, h("th", {}, "Project"), h("th", {}, "Status"), h("th", {}, "Branches"),
          countHeaders(), h("th", {}, "Pushes blocked"), h("th", {}, "Bypassed"))),
        h("tbody", {}, rows)));
}

async function projectView(key) {
  crumbs([[key, `#/projects/${enc(key)}`]]);
  const dashboard = await api("GET", `${SECURITY}/dashboard/projects/${enc(key)}`);
  const rows = dashboard.repositories.map((repository) => h("tr", { "data-repository": repository.repository },
    h("td", {}, link(repository.repository, `#/projects/${enc(key)}/repos/${enc(repository.repository)}`, { class: "repository-link" })),
    h("td", { class: `status ${repository.status.replace(/ /g, "-")}` }, repository.exempt ? "Exempt" : repository.status),
    h("td", {}, bar(repository.counts)),
    countCells(repository.counts),
    h("td", { class: "num hook-blocked" }, repository.hook.blocked),
    h("td", { class: "num hook-bypassed" }, repository.hook.bypassed),
    h("td", {}, repository.canRescan ? rescanButton("Rescan",
      `${SECURITY}/status/projects/${enc(key)}/repos/${enc(repository.repository)}`) : null)));
  const actions = h("div", { class: "actions" });
  if (dashboard.canRescan) actions.append(rescanButton("Rescan project", `${SECURITY}/status/projects/${enc(key)}`));
  show(h("h1", {}, `Project ${key}`), actions, legend(),
    h("table", { class: "repositories" },
      h("thead", {}, h("tr", {}, h("th", {}, "Repository"), h("th", {}, "Status"), h("th", {}, "Branches"),
        countHeaders(), h("th", {}, "Pushes blocked"), h("th", {}, "Bypassed"), h("th", {}))),
      h("tbody", {}, rows)));
}

async function repositoryView(key, slug) {
  const here = `#/projects/${enc(key)}/repos/${enc(slug)}`;
  crumbs([[key, `#/projects/${enc(key)}`], [slug, here]]);
  const dashboard = await api("GET", `${SECURITY}/dashboard/projects/${enc(key)}/repos/${enc(slug)}`);
  const rows = dashboard.branches.map((branch) => h("tr", { "data-branch": branch.name },
    h("td", {}, link(branch.name, `${here}/branches/${enc(branch.name)}`, { class: "branch-link" })),
    h("td", { class: `status ${branch.status.replace(/ /g, "-")}` }, branch.scan || branch.status),
    h("td", { class: "num" }, branch.findings),
    h("td", {}, h("code", {}, (branch.lastScannedCommit || "").slice(0, 12))),
    h("td", {}, dashboard.canRescan ? rescanButton("Rescan",
      `${SECURITY}/status/projects/${enc(key)}/repos/${enc(slug)}/branches?name=${enc(branch.name)}`) : null)));
  const actions = h("div", { class: "actions" },
    h("a", { class: "button secondary export", href: `${BASE}/rest/security/1.0/export-report/${enc(key)}/repos/${enc(slug)}` }, "Export findings (CSV)"));
  if (dashboard.canRescan) actions.prepend(rescanButton("Rescan repository", `${SECURITY}/status/projects/${enc(key)}/repos/${enc(slug)}`));
  show(h("h1", {}, `${key}/${slug}`),
    h("p", {}, "Pushes blocked by the hook: ", h("strong", { class: "hook-blocked" }, dashboard.hook.blocked),
      ", let through with a bypass: ", h("strong", { class: "hook-bypassed" }, dashboard.hook.bypassed)),
    actions,
    h("table", { class: "branches" },
      h("thead", {}, h("tr", {}, h("th", {}, "Branch"), h("th", {}, "Status"), h("th", {}, "Findings"),
        h("th", {}, "Last scanned"), h("th", {}))),
      h("tbody", {}, rows)));
}

async function branchView(key, slug, branch, filters) {
  const repository = `#/projects/${enc(key)}/repos/${enc(slug)}`;
  const here = `${repository}/branches/${enc(branch)}`;
  crumbs([[key, `#/projects/${enc(key)}`], [slug, repository], [branch, here]]);
  const [status, dashboard] = await Promise.all([
    api("GET", `/rest/security/1.0/scan/${enc(key)}/repos/${enc(slug)}?branch=${enc(branch)}&includeWhitelisted=true`),
    api("GET", `${SECURITY}/dashboard/projects/${enc(key)}/repos/${enc(slug)}`),
  ]);
  const all = status.invalidLines || [];
  const rules = [...new Set(all.map((line) => line.ruleName))].sort();
  const severities = [...new Set(all.map((line) => line.severity))].sort();
  const lines = all.filter((line) =>
    (!filters.rule || line.ruleName === filters.rule) &&
    (!filters.severity || line.severity === filters.severity) &&
    (filters.reviewed === "all" || String(line.reviewed) === (filters.reviewed || "false")));
  const select = (id, label, values, current, all) => h("label", {}, `${label} `,
    h("select", { id, onchange: () => rerender() },
      h("option", { value: "" }, all), values.map((value) => h("option", { value, selected: value === current }, value))));
  const reviewed = h("label", {}, "Reviewed ",
    h("select", { id: "filter-reviewed", onchange: () => rerender() },
      [["false", "Open"], ["true", "Reviewed"], ["all", "All"]].map(([value, text]) =>
        h("option", { value, selected: value === (filters.reviewed || "false") }, text))));
  function rerender() {
    const rule = document.getElementById("filter-rule").value;
    const severity = document.getElementById("filter-severity").value;
    const which = document.getElementById("filter-reviewed").value;
    const query = new URLSearchParams();
    if (rule) query.set("rule", rule);
    if (severity) query.set("severity", severity);
    if (which !== "false") query.set("reviewed", which);
    location.hash = `${here}${query.toString() ? "?" + query : ""}`;
  }
  const actions = h("div", { class: "actions" },
    h("a", { class: "button secondary export",
      href: `${BASE}/rest/security/1.0/export-report/${enc(key)}/repos/${enc(slug)}?branch=${enc(branch)}` }, "Export findings (CSV)"));
  if (dashboard.canRescan) actions.prepend(rescanButton("Rescan branch",
    `${SECURITY}/status/projects/${enc(key)}/repos/${enc(slug)}/branches?name=${enc(branch)}`));
  const table = lines.length === 0 ? h("p", { class: "empty" }, status.scanned === false ? "This branch was not scanned yet." : "No findings.") :
    h("table", { class: "findings" },
      h("thead", {}, h("tr", {}, h("th", {}, "Rule"), h("th", {}, "Severity"), h("th", {}, "Path"), h("th", {}, "Line"),
        h("th", {}, "Commit"), h("th", {}, "Author"), h("th", {}, "Secret (redacted)"), h("th", {}, "Reviewed"))),
      h("tbody", {}, lines.map((line) => h("tr", { class: line.reviewed ? "finding reviewed" : "finding" },
        h("td", {}, line.ruleName), h("td", {}, line.severity), h("td", {}, h("code", {}, line.path)),
        h("td", { class: "num" }, line.line === null ? "" : line.line), h("td", {}, h("code", {}, line.commit.slice(0, 12))),
        h("td", {}, line.author), h("td", {}, h("code", {}, line.secret)), h("td", {}, line.reviewed ? "yes" : "no")))));
  show(h("h1", {}, `${key}/${slug} · ${branch}`),
    status.lastError ? h("p", { class: "error" }, `The last scan failed: ${status.lastError}`) : null,
    actions,
    h("div", { class: "filters" },
      select("filter-rule", "Rule", rules, filters.rule, "All rules"),
      select("filter-severity", "Severity", severities, filters.severity, "All severities"),
      reviewed,
      h("span", { class: "shown" }, `${lines.length} of ${all.length} findings`)),
    table);
}

async function route() {
  if (!user) return;
  const [path, query] = location.hash.replace(/^#/, "").split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  const filters = Object.fromEntries(new URLSearchParams(query || ""));
  try {
    if (parts[0] === "projects" && parts.length === 2) await projectView(parts[1]);
    else if (parts[0] === "projects" && parts[2] === "repos" && parts.length === 4) await repositoryView(parts[1], parts[3]);
    else if (parts[0] === "projects" && parts[4] === "branches" && parts.length === 6) await branchView(parts[1], parts[3], parts[5], filters);
    else await overview();
  } catch (error) {
    failure(error);
  }
}

// ---- signing in and out ----

function signedIn(who) {
  user = who;
  document.getElementById("sign-in").hidden = true;
  document.getElementById("who").hidden = false;
  document.getElementById("who-name").textContent = who.displayName || who.name;
  loadJobs().catch(() => {});
  route();
}

function signedOut() {
  user = null;
  for (const source of streams.values()) source.close();
  streams.clear();
  document.getElementById("job-list").replaceChildren();
  document.getElementById("jobs").hidden = true;
  document.getElementById("who").hidden = true;
  document.getElementById("sign-in").hidden = false;
  crumbs([]);
  show();
}

document.getElementById("sign-in-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const error = document.getElementById("sign-in-error");
  error.textContent = "";
  try {
    const who = await api("POST", "/rest/dashboard/latest/session", {
      name: document.getElementById("name").value,
      password: document.getElementById("password").value,
    });
    document.getElementById("password").value = "";
    signedIn(who);
  } catch (failed) {
    error.textContent = failed.status === 401 && !/Too many/.test(failed.message) ? "Wrong user name or password." : failed.message;
  }
});

document.getElementById("sign-out").addEventListener("click", () => {
  api("DELETE", "/rest/dashboard/latest/session").catch(() => {}).finally(signedOut);
});

window.addEventListener("hashchange", route);

api("GET", "/rest/dashboard/latest/session").then(signedIn).catch(signedOut);
