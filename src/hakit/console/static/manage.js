"use strict";
// hakit console: the pages beyond watching and commands — a cluster's audit trail, its API
// tokens, its configuration, a module's editor, script outputs, templates, farm shares and
// replication lag. app.js calls hakitManage with its helpers. Pages whose forms hold what is
// typed are drawn again only when their data arrives (render(true)), never by the live stream.
window.hakitManage = function (ctx) {
  const { h, api, flash, may, fmtTime, confirmThen, render, S } = ctx;
  const enc = encodeURIComponent;
  const P = {}; // the current page's data, dropped when the route changes

  function reset() { for (const k of Object.keys(P)) delete P[k]; }
  function load(key, path) {
    if (!(key in P)) {
      P[key] = null;
      api("GET", path).then((r) => { P[key] = r; render(true); });
    }
    return P[key];
  }
  const base = (c) => `/api/clusters/${enc(c)}`;
  const back = (c) => h("p", {}, h("a", { href: "#/" }, "← Overview"), ` · cluster ${c}: `, clusterLinks(c));
  function clusterLinks(c) {
    return h("span", { class: "links" },
      h("a", { href: `#/c/${enc(c)}/audit` }, "Audit trail"), " · ",
      h("a", { href: `#/c/${enc(c)}/tokens` }, "API tokens"), " · ",
      h("a", { href: `#/c/${enc(c)}/config` }, "Configuration"));
  }
  function nodePicker(id, nodes) {
    return h("fieldset", { class: "pick", id }, h("legend", { text: "Apply on" }),
      nodes.map((n) => h("label", {}, h("input", { type: "checkbox", value: n, checked: true, "data-node": n }), " " + n)));
  }
  const picked = (id) => [...document.querySelectorAll(`#${id} input:checked`)].map((e) => e.value);
  function results(box, r, done) {
    box.replaceChildren();
    if (r.problems) {
      box.append(h("p", { class: "error", text: "Refused; nothing was changed:" }), h("pre", { class: "problems", text: r.problems.join("\n") }));
      return;
    }
    for (const x of r.results || []) {
      box.append(h("p", { class: x.ok ? "" : "error", "data-node": x.node, text: `${x.node}: ${x.ok ? done : "refused"} — ${x.message || ""}` }));
      if (x.problems) box.append(h("pre", { class: "problems", text: x.problems.join("\n") }));
    }
    if (!r.results) box.append(h("p", { class: r.ok ? "" : "error", text: r.message || (r.ok ? "OK" : "refused") }));
  }
  const whoText = (w) => {
    if (!w) return "?";
    let t = w.kind === "token" ? `token ${w.token} (${w.name}, ${w.role})` : w.kind === "node" ? `node ${w.node}${w.via ? " (" + w.via + ")" : ""}` : w.kind === "local" ? `uid ${w.uid} (unix socket)` : w.kind || "?";
    if (w.user) t += ` for ${w.user}`;
    return t;
  };

  // --- audit trail ---------------------------------------------------------------------------
  function auditPage(c) {
    const f = P.filter || (P.filter = { module: "", who: "", failed: false, hours: "24" });
    const q = new URLSearchParams({ limit: "300" });
    if (f.module) q.set("module", f.module);
    if (f.who) q.set("who", f.who);
    if (f.failed) q.set("failed", "true");
    if (f.hours) q.set("since", String(Date.now() / 1000 - 3600 * Number(f.hours)));
    const r = load("audit?" + [f.module, f.who, f.failed, f.hours].join("|"), `${base(c)}/audit?${q}`);
    const out = [back(c), h("h1", { text: `Audit trail of ${c}` })];
    const form = h("form", { class: "filters card", "aria-label": "audit filters", onsubmit: (ev) => {
      ev.preventDefault();
      const d = new FormData(ev.target);
      P.filter = { module: d.get("module"), who: d.get("who"), failed: d.get("failed") === "on", hours: d.get("hours") };
      render(true);
    } },
    h("label", {}, "Module ", h("input", { name: "module", value: f.module, size: 12 })),
    h("label", {}, "Who ", h("input", { name: "who", value: f.who, size: 12, placeholder: "user or token id" })),
    h("label", {}, "Last hours ", h("input", { name: "hours", value: f.hours, size: 4, inputmode: "numeric" })),
    h("label", {}, h("input", { type: "checkbox", name: "failed", checked: f.failed }), " refused or failed only"),
    h("button", { type: "submit" }, "Show"));
    out.push(form);
    const card = h("section", { class: "card", "aria-label": "audit records" });
    if (r === null) card.append(h("p", { class: "explain", text: "reading every node's audit trail…" }));
    else if (!r.items) card.append(h("p", { class: "error", text: r.message }));
    else {
      for (const e of r.errors || []) card.append(h("p", { class: "error", text: e }));
      const t = h("table", {}, h("tr", {}, ...["time", "node", "who", "request", "result", "message"].map((x) => h("th", { text: x }))));
      for (const a of [...r.items].reverse()) {
        t.append(h("tr", { class: a.result === "ok" ? "" : "failed" }, h("td", { text: fmtTime(a.at) }), h("td", { text: a.node }), h("td", { class: "who", text: whoText(a.who) }),
          h("td", { text: `${a.method} ${a.path}` }), h("td", { text: `${a.status} ${a.result}` }), h("td", { text: a.message || "" })));
      }
      if (!r.items.length) t.append(h("tr", {}, h("td", { colspan: "6", text: "no record" })));
      card.append(t);
    }
    out.push(card);
    if (may("admin")) out.push(journalCard());
    return out;
  }

  function journalCard() {
    const r = load("journal", "/api/console/journal");
    const card = h("section", { class: "card", "aria-label": "console journal" }, h("h2", { text: "The console's logins and logouts" }));
    if (r === null) return card;
    if (!r.items) { card.append(h("p", { class: "error", text: r.message })); return card; }
    const ul = h("ul", { class: "timeline" });
    for (const j of [...r.items].reverse()) ul.append(h("li", {}, h("time", { text: fmtTime(j.at) }), h("b", { text: j.user + " " }), `${j.message} from ${j.address}`));
    if (!r.items.length) ul.append(h("li", { text: "nothing since the console started" }));
    card.append(ul);
    return card;
  }

  // --- API tokens ------------------------------------------------------------------------------
  function tokensPage(c) {
    const out = [back(c), h("h1", { text: `API tokens of ${c}` })];
    if (!may("admin")) return out.concat(h("p", { class: "notice", text: `Your role is ${S.me.role}: API tokens need admin.` }));
    const r = load("tokens", `${base(c)}/tokens`);
    if (r === null) return out.concat(h("p", { class: "explain", text: "reading the tokens…" }));
    if (!r.ok) return out.concat(h("p", { class: "notice", id: "tokens-refused", text: r.message }));
    if (P.made) {
      out.push(h("section", { class: "card made", "aria-label": "new token" }, h("h2", { text: `Token ${P.made.id} (${P.made.name}, ${P.made.role})` }),
        h("p", { class: "notice", text: "Copy it now: it is shown only this once (the cluster keeps only its digest)." }),
        h("pre", { class: "file", id: "made-token", text: `token: ${P.made.token}\nCA fingerprint: ${P.made.ca_fingerprint}` })));
    }
    const t = h("table", { "aria-label": "tokens" }, h("tr", {}, ...["id", "name", "role", "created", "expires", "last used here", ""].map((x) => h("th", { text: x }))));
    for (const k of r.tokens || []) {
      const revoked = !!k.revoked;
      t.append(h("tr", { "data-token": k.id }, h("td", { text: k.id }), h("td", { text: k.name }), h("td", { text: k.role }),
        h("td", { text: k.created ? new Date(k.created * 1000).toLocaleString() : "" }),
        h("td", { text: revoked ? "revoked" : k.expires ? new Date(k.expires * 1000).toLocaleString() : "never" }),
        h("td", { text: k.last_used_here ? new Date(k.last_used_here * 1000).toLocaleString() : "" }),
        h("td", {}, revoked ? null : h("button", { type: "button", class: "quiet", "data-action": "revoke", onclick: () =>
          confirmThen(`Revoke token ${k.id}?`, `${k.name} (${k.role}) stops working on every node of ${c}; whatever uses it is refused`, async () => {
            const x = await api("POST", `${base(c)}/tokens/${enc(k.id)}/revoke`);
            flash(x.message, !x.ok);
            delete P.tokens; render(true);
          }) }, "revoke"))));
    }
    out.push(h("section", { class: "card" }, t, h("p", { class: "explain", text: r.problem || "" })));
    const form = h("form", { class: "grid card", "aria-label": "create a token", onsubmit: async (ev) => {
      ev.preventDefault();
      const d = Object.fromEntries(new FormData(ev.target).entries());
      if (d.ttl) d.ttl = String(Number(d.ttl) * 86400);
      const x = await api("POST", `${base(c)}/tokens`, JSON.stringify(d));
      flash(x.message, !x.ok);
      if (x.ok) { P.made = x; delete P.tokens; render(true); }
    } }, h("h2", { class: "full", text: "Create a token" }),
    h("label", { for: "tok-name", text: "Name" }), h("input", { id: "tok-name", name: "name", required: true, placeholder: "ci-deploy" }),
    h("label", { for: "tok-role", text: "Role" }), h("select", { id: "tok-role", name: "role" }, ["monitor", "control", "admin"].map((x) => h("option", { value: x, text: x }))),
    h("label", { for: "tok-ttl", text: "Valid for (days)" }), h("input", { id: "tok-ttl", name: "ttl", inputmode: "numeric", placeholder: "empty: until revoked" }),
    h("div", { class: "full" }, h("button", { type: "submit" }, "Create")));
    out.push(form);
    return out;
  }

  // --- editors: a module's files, the cluster's configuration ------------------------------------
  function placeProblems(box, problems) {
    // file:line: … next to that file's editor, the rest in the box
    document.querySelectorAll("pre.inline-problems").forEach((e) => e.remove());
    const rest = [];
    for (const p of problems) {
      const where = p.split(":")[0]; // web.hakit/module.yaml, or module.yaml
      const ta = [...document.querySelectorAll("textarea[data-file]")].find((t) => where === t.dataset.file || where.endsWith("/" + t.dataset.file));
      const file = ta && ta.dataset.file;
      if (ta) {
        let pre = ta.parentElement.querySelector("pre.inline-problems");
        if (!pre) { pre = h("pre", { class: "problems inline-problems", "data-file": file }); ta.after(pre); }
        pre.textContent += (pre.textContent ? "\n" : "") + p;
      } else rest.push(p);
    }
    box.replaceChildren(h("p", { class: "error", text: "Refused; nothing was changed" + (rest.length ? ":" : " (the problems are under the files).") }));
    if (rest.length) box.append(h("pre", { class: "problems", text: rest.join("\n") }));
  }

  function editPage(c, m) {
    const out = [h("p", {}, h("a", { href: `#/c/${enc(c)}/m/${enc(m)}` }, `← ${m}`)), h("h1", { text: `Edit ${m} on ${c}` })];
    if (!may("admin")) return out.concat(h("p", { class: "notice", text: `Your role is ${S.me.role}: changing a module needs admin.` }));
    const r = load("files", `${base(c)}/modules/${enc(m)}/files`);
    if (r === null) return out.concat(h("p", { class: "explain", text: "reading the module's files…" }));
    if (!r.ok) return out.concat(h("p", { class: "error", text: r.message }));
    const drafts = P.drafts || (P.drafts = {});
    const files = (r.body && r.body.files) || {};
    const card = h("section", { class: "card", "aria-label": "module editor" });
    for (const [name, text] of Object.entries(files)) {
      if (!(name in drafts)) drafts[name] = text;
      card.append(h("div", { class: "editor" }, h("label", { for: "ed-" + name, text: name }),
        h("textarea", { id: "ed-" + name, class: "code", "data-file": name, rows: String(Math.min(30, Math.max(4, text.split("\n").length + 1))), spellcheck: "false",
          oninput: (ev) => { drafts[name] = ev.target.value; } }, drafts[name])));
    }
    const mod = ((S.clusters[c] || {}).state || { modules: {} }).modules[m] || {};
    const nodes = Object.keys(mod.nodes || {}).sort();
    const box = h("div", { id: "edit-result", "aria-live": "polite" });
    const changed = () => Object.fromEntries(Object.entries(drafts).filter(([k, v]) => v !== files[k]));
    const send = async (step) => {
      const ch = changed();
      if (!Object.keys(ch).length) { box.replaceChildren(h("p", { text: "nothing changed" })); return; }
      box.replaceChildren(h("p", { text: step === "check" ? "checking…" : "checking, then installing…" }));
      const x = await api("POST", `${base(c)}/modules/${enc(m)}/edit/${step}`, JSON.stringify({ files: ch, nodes: picked("edit-nodes") }));
      document.querySelectorAll("pre.inline-problems").forEach((e) => e.remove());
      if (x.problems) placeProblems(box, x.problems);
      else if (step === "check") box.replaceChildren(h("p", { class: x.ok ? "ok" : "error", text: x.ok ? `the changes pass the checks: ${x.message || ""}` : x.message }));
      else results(box, x, "applied");
    };
    card.append(nodePicker("edit-nodes", nodes),
      h("div", { class: "actions" },
        h("button", { type: "button", "data-action": "check", onclick: () => send("check") }, "Check"),
        h("button", { type: "button", "data-action": "apply", onclick: () => confirmThen(`Apply the changes to ${m}?`,
          `the changed files are checked by a node, then installed on ${picked("edit-nodes").join(", ") || "no node"}; a node where ${m} runs refuses (stop it there first)`, () => send("apply")) }, "Check and apply")),
      box);
    out.push(card);
    return out;
  }

  function configPage(c) {
    const out = [back(c), h("h1", { text: `Configuration of ${c}` })];
    const r = load("cluster", `${base(c)}/cluster`);
    if (r === null) return out.concat(h("p", { class: "explain", text: "reading the configuration…" }));
    if (!r.ok) return out.concat(h("p", { class: "error", text: r.message }));
    const admin = may("admin");
    if (P.text === undefined) P.text = r.text;
    const card = h("section", { class: "card", "aria-label": "cluster editor" },
      h("p", { class: "explain", text: `cluster.yaml as node ${r.node} runs it (defaults filled in)` + (r.pending_restart.length ? ` — waiting for a restart: ${r.pending_restart.join(", ")}` : "") }),
      h("div", { class: "editor" }, h("label", { for: "ed-cluster", text: "cluster.yaml" }),
        h("textarea", { id: "ed-cluster", class: "code", "data-file": "cluster.yaml", rows: "30", spellcheck: "false", readonly: !admin, oninput: (ev) => { P.text = ev.target.value; } }, P.text)));
    if (!admin) { card.append(h("p", { class: "notice", text: `Your role is ${S.me.role}: changing the configuration needs admin.` })); return out.concat(card); }
    const box = h("div", { id: "cluster-result", "aria-live": "polite" });
    const send = async (step) => {
      box.replaceChildren(h("p", { text: "checking…" }));
      const x = await api("POST", `${base(c)}/cluster/${step}`, JSON.stringify({ text: P.text, nodes: picked("cluster-nodes") }));
      if (x.problems) box.replaceChildren(h("p", { class: "error", text: "Refused; nothing was changed:" }), h("pre", { class: "problems", text: x.problems.join("\n") }));
      else if (step === "check") box.replaceChildren(h("p", { class: x.ok ? "" : "error", text: x.message }));
      else results(box, x, "applied");
    };
    const nodes = Object.keys((((S.clusters[c] || {}).state) || { nodes: {} }).nodes).sort();
    card.append(nodePicker("cluster-nodes", nodes), h("div", { class: "actions" },
      h("button", { type: "button", "data-action": "check", onclick: () => send("check") }, "Check"),
      h("button", { type: "button", "data-action": "apply", onclick: () => confirmThen("Apply this cluster.yaml?",
        `checked by a node, then applied on ${picked("cluster-nodes").join(", ")}: live where it can be, else at the next restart`, () => send("apply")) }, "Check and apply")), box);
    return out.concat(card);
  }

  // --- module page additions -----------------------------------------------------------------
  function scriptsCard(c, m, mod) {
    const key = c + "/" + m;
    const sv = (S.scripts[key] = S.scripts[key] || { lists: {}, shown: null });
    const card = h("section", { class: "card", "aria-label": "script outputs" }, h("h2", { text: "Script outputs" }));
    const nodes = Object.keys(mod.nodes || {}).sort();
    const refresh = () => { sv.lists = {}; render(); };
    for (const n of nodes) {
      if (!(n in sv.lists)) {
        sv.lists[n] = null;
        api("GET", `${base(c)}/modules/${enc(m)}/scripts?node=${enc(n)}`).then((r) => { sv.lists[n] = r; render(); });
      }
      const r = sv.lists[n];
      const row = h("div", { class: "scripts", "data-node": n }, h("b", { text: n + ": " }));
      if (r === null) row.append("…");
      else if (!r.ok) row.append(h("span", { class: "error", text: r.message }));
      else if (!r.items.length) row.append(h("span", { class: "explain", text: "no script run yet" }));
      else for (const x of r.items.slice(-8).reverse()) {
        row.append(h("button", { type: "button", class: "quiet", "data-script": x.name, title: `${x.size} B, ${fmtTime(x.at)}`, onclick: async () => {
          const t = await api("GET", `${base(c)}/modules/${enc(m)}/scripts?node=${enc(n)}&name=${enc(x.name)}`);
          sv.shown = { node: n, name: x.name, text: t.ok ? t.text : t.message };
          render();
        } }, x.name));
      }
      card.append(row);
    }
    card.append(h("div", { class: "actions" }, h("button", { type: "button", class: "quiet", onclick: refresh }, "Refresh")));
    if (sv.shown) card.append(h("h3", { text: `${sv.shown.node}: ${sv.shown.name}` }), h("pre", { class: "file script-output", text: sv.shown.text || "(empty)" }));
    return card;
  }

  // a timeline entry of a module whose outputs are shown: its scripts may have run, read
  // the lists again (once for a burst of entries)
  function scriptsMayHaveRun(c, m) {
    const sv = S.scripts[c + "/" + m];
    if (!sv || sv.soon) return;
    sv.soon = setTimeout(() => { sv.soon = null; sv.lists = {}; render(); }, 1500);
  }

  function moduleLinks(c, m) {
    return h("div", { class: "actions" },
      h("a", { class: "button", href: `${base(c)}/modules/${enc(m)}/package`, download: `${m}.hakit` }, "Download .hakit"),
      may("admin") ? h("a", { class: "button", href: `#/c/${enc(c)}/m/${enc(m)}/edit` }, "Edit the configuration") : null);
  }

  // a farm's buckets: each node's share as a bar (from the state document's farm data)
  function sharesCard(mod) {
    const card = h("section", { class: "card", "aria-label": "bucket shares" }, h("h2", { text: "Bucket shares" }));
    const nodes = Object.entries(mod.nodes || {}).sort();
    const W = 600, lane = 24, H = 10 + lane * nodes.length;
    const s = ctx.svg("svg", { class: "chart shares", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "share of the buckets per node" });
    nodes.forEach(([n, ns], i) => {
      const y = 5 + i * lane, share = Number(ns.share || 0);
      s.append(ctx.svg("text", { x: 4, y: y + 15 }, n));
      s.append(ctx.svg("rect", { x: 70, y, width: W - 140, height: lane - 6, fill: "none", stroke: "#9aa4b1" }));
      s.append(ctx.svg("rect", { x: 70, y, width: ((W - 140) * share / 100).toFixed(1), height: lane - 6, fill: ns.state === "UP" ? "#1f8a3b" : "#9aa4b1" },
        ctx.svg("title", {}, `${n}: ${ns.buckets} buckets (${share} %), weight ${ns.weight}`)));
      s.append(ctx.svg("text", { x: W - 64, y: y + 15 }, `${share} %`));
    });
    card.append(s, h("p", { class: "explain", text: nodes.map(([n, ns]) => `${n}: ${ns.buckets || 0} buckets` + (ns.target !== undefined ? ` (target ${ns.target})` : "") + `, weight ${ns.weight}`).join(" · ") }));
    return card;
  }

  // templates: a new module from one of the shipped examples, edited before it is installed
  function templatesCard(names, admin) {
    const form = h("form", { class: "grid card", "aria-label": "create a module from a template", onsubmit: async (ev) => {
      ev.preventDefault();
      const d = new FormData(ev.target);
      const res = document.getElementById("tpl-result");
      res.textContent = "checking…";
      const x = await api("POST", `${base(d.get("cluster"))}/create`, JSON.stringify({ name: d.get("name"), template: d.get("template"), files: { "module.yaml": d.get("yaml") } }));
      results(res, x, "installed");
      flash(x.ok ? `module ${d.get("name")} created` : "create failed", !x.ok);
    } }, h("h2", { class: "full", text: "Create a module from a template" }),
    h("label", { for: "tpl-cluster", text: "Cluster" }), h("select", { id: "tpl-cluster", name: "cluster", disabled: !admin }, names.map((n) => h("option", { value: n, text: n }))),
    h("label", { for: "tpl-template", text: "Template" }), h("select", { id: "tpl-template", name: "template", disabled: !admin, onchange: (ev) => fill(ev.target.value) },
      ["mirror-web", "farm-web", "console-ha"].map((t) => h("option", { value: t, text: t }))),
    h("label", { for: "tpl-name", text: "Module name" }), h("input", { id: "tpl-name", name: "name", required: true, disabled: !admin }),
    h("label", { for: "tpl-yaml", text: "module.yaml" }), h("textarea", { id: "tpl-yaml", name: "yaml", class: "code", rows: "14", spellcheck: "false", disabled: !admin }),
    h("div", { class: "full" }, h("button", { type: "submit", disabled: !admin }, "Check and create")),
    h("div", { class: "full", id: "tpl-result", "aria-live": "polite" }));
    async function fill(t) {
      if (!S.templates) S.templates = await api("GET", "/api/templates");
      const ta = document.getElementById("tpl-yaml");
      if (ta && S.templates[t]) ta.value = S.templates[t]["module.yaml"];
    }
    if (admin) setTimeout(() => fill("mirror-web"), 0);
    return form;
  }

  return { reset, scriptsMayHaveRun, auditPage, tokensPage, configPage, editPage, scriptsCard, moduleLinks, sharesCard, templatesCard, clusterLinks, journalCard };
};
