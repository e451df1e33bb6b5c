"use strict";
// hakit console: vanilla JS, no dependency. Live data comes from /api/stream (server-sent
// events); every action is a POST with the session's CSRF token.
(function () {
  const ROLES = ["monitor", "control", "admin"];
  const NEEDS = { command: "control", checker: "control", install: "admin", registry: "admin" };
  const S = { me: null, clusters: {}, events: {}, fetched: {}, files: {}, history: {}, rates: {}, lags: {}, scripts: {}, live: false };
  const $ = (sel, root) => (root || document).querySelector(sel);
  const view = $("#view");

  function h(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else if (k === "text") e.textContent = v;
      else e.setAttribute(k, v === true ? "" : v);
    }
    for (const k of kids.flat()) if (k !== null && k !== undefined) e.append(k);
    return e;
  }
  const may = (need) => S.me && ROLES.indexOf(S.me.role) >= ROLES.indexOf(need);
  const fmtTime = (t) => new Date(t * 1000).toLocaleTimeString([], { hour12: false });
  const mib = (b) => (b / 1048576).toFixed(1) + " MiB";
  const M = window.hakitManage({ h, api, flash, may, fmtTime, confirmThen, render, S, svg });

  function flash(text, bad) {
    const f = $("#flash");
    f.textContent = text;
    f.className = bad ? "bad" : "";
    f.hidden = false;
  }

  async function api(method, path, body, type) {
    const opts = { method, headers: { "X-Hakit-CSRF": S.me ? S.me.csrf : "" }, credentials: "same-origin" };
    if (body !== undefined) {
      opts.body = body;
      opts.headers["Content-Type"] = type || "application/json";
    }
    const r = await fetch(path, opts);
    if (r.status === 401) {
      location.href = "/login?why=expired";
      throw new Error("session expired");
    }
    let data = {};
    try { data = await r.json(); } catch (e) { data = { message: r.statusText }; }
    data.status = r.status;
    return data;
  }

  // --- states and badges --------------------------------------------------------------------
  function stateChip(n) {
    if (!n) return h("span", { class: "state unreachable", text: "—" });
    if (n.reachable === false) return h("span", { class: "state unreachable", text: "unreachable" });
    const cls = n.state === "STOP" ? "STOP" : n.status;
    let label = n.state + " " + n.status;
    if (n.state === "UP" && n.share !== undefined) label += " " + n.share + "%";
    return h("span", { class: "state " + cls, title: n.reason || "", text: label });
  }

  function badges(mod) {
    const out = [];
    const repl = mod.replication;
    const p = repl && repl.progress;
    if (p) {
      const pct = p.percent !== null && p.percent !== undefined ? Math.round(p.percent) + " %" : "";
      out.push(["warn", `resynchronising ${pct} — ETA ${Math.round(p.eta || 0)} s`]);
    } else if (repl && repl.role === "primary" && repl.state !== "ready") {
      out.push(["bad", "replication down"]);
    }
    if (mod.unprotected) out.push(["bad", "unprotected"]);
    const sb = mod.split_brain || {};
    if (repl && repl.diverged_copy_kept) out.push(["bad", "split brain: diverged copy kept"]);
    if (sb.asking) out.push(["warn", "asking the witness"]);
    for (const [name, c] of Object.entries(mod.checkers || {})) {
      if (c.health === "off") out.push(["warn", `checker ${name} off`]);
      else if (c.health === "down") out.push(["bad", `checker ${name} down`]);
    }
    if (mod.failover === false) out.push(["warn", "failover off"]);
    if (mod.error) out.push(["bad", "error"]);
    return out.map(([k, t]) => h("span", { class: "badge " + k, text: t }));
  }

  // --- what an action will do ---------------------------------------------------------------
  function explain(cmd, node, mod) {
    const nodes = mod.nodes || {};
    const me = nodes[node] || {};
    const peers = Object.keys(nodes).filter((n) => n !== node);
    const peer = peers[0];
    const ps = nodes[peer] || {};
    const primary = me.state === "PRIM" || me.state === "ALONE";
    const readySecond = ps.state === "SECOND" && ps.status === "ready";
    if (mod.kind === "farm") {
      if (cmd === "stop") return `stop on ${node}: its share of the connections moves to ${peers.join(", ") || "nobody"}`;
      if (cmd === "start") return `start on ${node}: it takes a share of the connections`;
    }
    switch (cmd) {
      case "start": return `start on ${node}: it becomes primary if its data is up to date and no other node is primary, else secondary`;
      case "stop":
        if (primary && readySecond && mod.failover !== false) return `stop on the primary: ${peer} will take over (it is an up-to-date secondary)`;
        if (primary) return `stop on the primary ${node}: the application stops; no other node can take over (${peer || "no peer"} is ${ps.state || "absent"})`;
        if (me.state === "SECOND") return `stop the secondary ${node}: ${peer} goes on alone, unprotected until ${node} is back`;
        return `stop on ${node}`;
      case "restart": return `restart the application on ${node} (stop then start scripts), no failover`;
      case "stopstart": return primary && readySecond ? `stop then start on ${node}: ${peer} takes over, then ${node} rejoins as secondary` : `stop then start the module on ${node}`;
      case "swap": return primary ? `swap: ${node} becomes secondary and ${peer} primary; the application restarts on ${peer}` : `swap: ${node} becomes primary and ${peer} secondary; the application restarts on ${node}`;
      case "prim": return `force ${node} to start as primary (refused if ${peer} is primary)`;
      case "second": return `force ${node} to start as secondary (refused if ${peer} is not primary)`;
      case "primforce": return `DANGER: start ${node} as primary even if its data may be older: what was written on ${peer} since may be lost`;
      case "failover-off": return `switch automatic failover off for this module (seen from ${node}): a failure will not move the application`;
      case "failover-on": return `switch automatic failover on again for this module`;
    }
    return cmd + " on " + node;
  }

  function confirmThen(title, text, action) {
    const d = $("#confirm");
    $("#confirm-title").textContent = title;
    $("#confirm-text").textContent = text;
    d.returnValue = "";
    d.onclose = () => { if (d.returnValue === "ok") action(); };
    d.showModal();
    $("#confirm-ok").focus();
  }

  function actionButton(label, need, title, text, run) {
    const allowed = may(need);
    return h("button", {
      type: "button",
      "aria-disabled": allowed ? null : "true",
      title: allowed ? text : `your role (${S.me && S.me.role}) cannot do this: it needs ${need}`,
      "data-action": label,
      onclick: () => {
        if (!allowed) { flash(`${label}: your role ${S.me.role} cannot do this (needs ${need})`, true); return; }
        confirmThen(title, text, run);
      },
    }, label);
  }

  async function runCommand(cluster, module, cmd, node) {
    flash(`${cmd} ${module} on ${node}…`);
    const r = await api("POST", `/api/clusters/${encodeURIComponent(cluster)}/modules/${encodeURIComponent(module)}/command/${cmd}?node=${encodeURIComponent(node)}`);
    flash(`${cmd} on ${node}: ${r.ok ? "accepted" : "refused"}${r.message ? " — " + r.message : ""}`, !r.ok);
  }

  // --- overview -----------------------------------------------------------------------------
  function overview() {
    const names = Object.keys(S.clusters).sort();
    const out = [h("h1", { text: "Overview" })];
    if (!names.length) out.push(h("p", {}, "No cluster registered yet. ", h("a", { href: "#/admin" }, "Register one")));
    for (const name of names) out.push(clusterCard(name));
    return out;
  }

  function clusterCard(name) {
    const c = S.clusters[name];
    const st = c.state;
    const card = h("section", { class: "card" + (c.error ? " unreachable" : ""), "aria-label": "cluster " + name, "data-cluster": name });
    card.append(h("h2", {}, `${name}`, st ? h("small", { class: "explain", text: ` — cluster ${st.cluster}, seen from ${st.node}` }) : null), h("p", {}, M.clusterLinks(name)));
    if (c.error) card.append(h("p", { class: "error", text: (st ? "live updates lost: " : "unreachable: ") + c.error }));
    if (!st) return card;
    const nodes = Object.keys(st.nodes);
    const nt = h("table", {}, h("tr", {}, h("th", { text: "node" }), h("th", { text: "state" }), h("th", { text: "networks" })));
    for (const n of nodes) {
      const nd = st.nodes[n];
      const alive = nd.state === "self" || nd.alive;
      nt.append(h("tr", {}, h("td", { text: n }),
        h("td", {}, h("span", { class: "state " + (alive ? "ready" : "not-ready"), text: alive ? "alive" : "LOST" })),
        h("td", { text: Object.entries(nd.networks).map(([k, v]) => `${k} ${v ? "up" : "down"}`).join(", ") })));
    }
    card.append(nt);
    const mods = Object.keys(st.modules || {}).sort();
    if (!mods.length) { card.append(h("p", { class: "explain", text: "no module installed" })); return card; }
    const mt = h("table", {}, h("tr", {}, h("th", { text: "module" }), ...nodes.map((n) => h("th", { text: n }))));
    for (const m of mods) {
      const mod = st.modules[m];
      const b = badges(mod);
      mt.append(h("tr", { "data-module": m },
        h("td", {}, h("a", { href: `#/c/${encodeURIComponent(name)}/m/${encodeURIComponent(m)}` }, m), h("small", { class: "explain", text: " " + (mod.kind || "") }),
          b.length ? h("div", { class: "badges" }, b) : null),
        ...nodes.map((n) => h("td", { "data-node": n }, stateChip((mod.nodes || {})[n])))));
    }
    card.append(mt);
    return card;
  }

  // --- module page --------------------------------------------------------------------------
  function modulePage(cluster, module) {
    const c = S.clusters[cluster];
    const out = [h("p", {}, h("a", { href: "#/" }, "← Overview"))];
    if (!c || !c.state) return out.concat(h("p", { text: `cluster ${cluster}: no state yet` }));
    const mod = (c.state.modules || {})[module];
    if (!mod) return out.concat(h("p", { text: `no module ${module} on cluster ${cluster}` }));
    out.push(h("h1", {}, `${module} `, h("small", { class: "explain", text: `${mod.kind} module on cluster ${cluster}` }), " ", badges(mod)));
    const grid = h("div", { class: "nodes" });
    const cmds = mod.kind === "farm" ? ["start", "stop", "restart"] : ["start", "stop", "restart", "swap", "stopstart", "prim", "second", "primforce", mod.failover === false ? "failover-on" : "failover-off"];
    for (const [n, ns] of Object.entries(mod.nodes || {}).sort()) {
      const box = h("section", { class: "card", "data-node": n, "aria-label": "node " + n },
        h("h2", {}, n + " ", stateChip(ns)),
        ns.reason ? h("p", { class: "explain", text: ns.reason }) : null,
        ns.blocked ? h("p", { class: "error", text: "blocked: " + ns.blocked }) : null);
      const acts = h("div", { class: "actions" });
      for (const cmd of cmds) {
        const text = explain(cmd, n, mod);
        acts.append(actionButton(cmd, NEEDS.command, `${cmd} ${module} on ${n}?`, text, () => runCommand(cluster, module, cmd, n)));
      }
      box.append(acts);
      grid.append(box);
    }
    out.push(grid);
    if (mod.kind === "farm") out.push(M.sharesCard(mod));
    out.push(replicationCard(cluster, module, mod));
    out.push(checkersCard(cluster, module, mod));
    out.push(failoverChart(cluster, module, mod));
    out.push(timelineCard(cluster, module));
    out.push(M.scriptsCard(cluster, module, mod));
    out.push(configCard(cluster, module, mod));
    return out;
  }

  // the module's files as a node has them (read-only), and its uninstallation (admin)
  function configCard(cluster, module, mod) {
    const key = cluster + "/" + module;
    const card = h("section", { class: "card", "aria-label": "configuration" }, h("h2", { text: "Configuration" }), M.moduleLinks(cluster, module));
    if (!(key in S.files)) {
      S.files[key] = null;
      api("GET", `/api/clusters/${encodeURIComponent(cluster)}/modules/${encodeURIComponent(module)}/files`)
        .then((r) => { S.files[key] = r.ok ? r.body : { error: r.message }; render(); });
    }
    const f = S.files[key];
    if (f === null) card.append(h("p", { class: "explain", text: "reading the module's files…" }));
    else if (f.error) card.append(h("p", { class: "error", text: f.error }));
    else {
      for (const [name, text] of Object.entries(f.files || {})) {
        card.append(h("details", { open: name === "module.yaml" ? true : null }, h("summary", { text: name }), h("pre", { class: "file", text })));
      }
    }
    const stopped = Object.values(mod.nodes || {}).every((n) => n.state === "STOP" || n.reachable === false);
    card.append(h("div", { class: "actions" }, actionButton("uninstall", NEEDS.install, `Uninstall ${module}?`,
      stopped ? `remove ${module} from every node of ${cluster} (its files are deleted; replicated data stays)` : `uninstall ${module}: every node refuses while it runs — stop it first`,
      async () => {
        const r = await api("POST", `/api/clusters/${encodeURIComponent(cluster)}/modules/${encodeURIComponent(module)}/uninstall`);
        flash(`uninstall ${module}: ${(r.results || []).map((x) => x.node + ": " + (x.ok ? "done" : x.message)).join("; ") || r.message}`, !r.ok);
      })));
    return card;
  }

  function replicationCard(cluster, module, mod) {
    const repl = mod.replication;
    const card = h("section", { class: "card", "aria-label": "replication" }, h("h2", { text: "Replication" }));
    if (!repl) { card.append(h("p", { class: "explain", text: "no replicated directory" })); return card; }
    card.append(h("p", { text: `${repl.mode} on ${repl.network}: ${repl.dirs.join(", ")} — ${repl.role || "-"} ${repl.state}` }));
    const p = repl.progress;
    if (p) {
      const pct = p.percent || 0;
      card.append(h("div", { class: "progress", role: "progressbar", "aria-valuenow": String(pct), "aria-valuemin": "0", "aria-valuemax": "100" }, h("span", { style: `width:${pct}%` })));
      card.append(h("p", { class: "explain", text: `${pct} % — ${p.files_done}/${p.files_total} files, ${mib(p.bytes_done || 0)}/${mib(p.bytes_total || 0)}, ${mib(p.rate || 0)}/s, ETA ${Math.round(p.eta || 0)} s` }));
    } else if (repl.last_sync) {
      const l = repl.last_sync;
      card.append(h("p", { class: "explain", text: `last resynchronisation ${l.at ? fmtTime(l.at) : ""}: ${l.bytes_sent} B sent, ${l.files_total} files compared in ${l.elapsed} s` }));
    }
    const samples = S.rates[cluster + "/" + module] || [];
    card.append(h("h3", { text: "Throughput (resynchronisation, MiB/s)" }), lineChart(samples, "MiB/s", "no resynchronisation seen since this page opened"));
    card.append(h("h3", { text: "Replication lag (s, on the primary)" }), lineChart(S.lags[cluster + "/" + module] || [], "s", "no lag measured since this page opened"));
    return card;
  }

  function svg(tag, attrs, ...kids) {
    const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    for (const k of kids) e.append(k);
    return e;
  }

  function lineChart(samples, unit, empty) {
    const W = 600, H = 120;
    const s = svg("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": unit === "s" ? "lag chart" : "throughput chart" });
    if (samples.length < 2) { s.append(svg("text", { x: 10, y: 60 }, empty)); return s; }
    const t0 = samples[0][0], t1 = samples[samples.length - 1][0];
    const max = Math.max(unit === "s" ? 0.01 : 1, ...samples.map((x) => x[1]));
    const pts = samples.map(([t, v]) => `${(10 + (W - 20) * (t - t0) / Math.max(1, t1 - t0)).toFixed(1)},${(H - 15 - (H - 30) * v / max).toFixed(1)}`);
    s.append(svg("polyline", { points: pts.join(" "), fill: "none", stroke: "#1d4ed8", "stroke-width": "2" }));
    s.append(svg("text", { x: 10, y: 12 }, `max ${max.toFixed(unit === "s" ? 3 : 1)} ${unit}`));
    return s;
  }

  function checkersCard(cluster, module, mod) {
    const card = h("section", { class: "card", "aria-label": "checkers" }, h("h2", { text: "Checkers" }));
    const cs = Object.entries(mod.checkers || {});
    if (!cs.length) { card.append(h("p", { class: "explain", text: "no checker" })); return card; }
    const t = h("table", {}, h("tr", {}, ...["checker", "what", "when / action", "health", "last result", ""].map((x) => h("th", { text: x }))));
    for (const [name, c] of cs) {
      const off = c.health === "off";
      const sw = off ? "on" : "off";
      const text = off ? `switch checker ${name} on again: its failures act again (${c.action})` : `switch checker ${name} off for maintenance: its failures are ignored until it is switched on`;
      t.append(h("tr", { "data-checker": name }, h("td", { text: name }), h("td", { text: c.what }), h("td", { text: `${c.when} / ${c.action}` }),
        h("td", { text: c.health }), h("td", { text: c.detail || "" }),
        h("td", {}, actionButton(`switch ${sw}`, NEEDS.checker, `Switch ${name} ${sw}?`, text, async () => {
          const r = await api("POST", `/api/clusters/${encodeURIComponent(cluster)}/modules/${encodeURIComponent(module)}/checkers/${encodeURIComponent(name)}/${sw}`);
          flash(`checker ${name} ${sw}: ${r.ok ? "done" : "refused"} ${(r.results || []).map((x) => x.node + ": " + x.message).join("; ") || r.message || ""}`, !r.ok);
        }))));
    }
    card.append(t);
    return card;
  }

  // who held which state when, from the states seen live, with the timeline's steps as marks
  function failoverChart(cluster, module, mod) {
    const card = h("section", { class: "card", "aria-label": "failover timeline chart" }, h("h2", { text: "Roles over time" }));
    const hist = S.history[cluster + "/" + module] || [];
    const nodes = Object.keys(mod.nodes || {}).sort();
    const W = 600, lane = 26, H = 30 + lane * nodes.length + 40;
    const s = svg("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "roles of each node over time" });
    const now = Date.now() / 1000;
    const t0 = hist.length ? Math.min(hist[0].t - 2, now - 20) : now - 60;
    const x = (t) => 70 + (W - 80) * (t - t0) / Math.max(1, now - t0);
    const colour = { PRIM: "#1f8a3b", ALONE: "#5aa469", SECOND: "#1d4ed8", UP: "#1f8a3b", WAIT: "#c77700", STOP: "#9aa4b1" };
    nodes.forEach((n, i) => {
      const y = 20 + i * lane;
      s.append(svg("text", { x: 4, y: y + 15 }, n));
      const mine = hist.filter((e) => e.node === n);
      mine.forEach((e, j) => {
        const end = j + 1 < mine.length ? mine[j + 1].t : now;
        s.append(svg("rect", { x: x(e.t).toFixed(1), y, width: Math.max(1, x(end) - x(e.t)).toFixed(1), height: lane - 6, fill: colour[e.state] || "#888" },
          svg("title", {}, `${n} ${e.state} ${e.status} from ${fmtTime(e.t)}`)));
        if (x(end) - x(e.t) > 40) s.append(svg("text", { x: x(e.t) + 3, y: y + 14, style: "fill:#fff" }, e.state));
      });
    });
    const evs = timelineOf(cluster, module).filter((e) => e.at >= t0);
    let lastX = -100;
    const marks = [["lost|no heartbeat|peer", "detection"], ["ALONE|PRIM", "decision"], ["VIP", "VIP"], ["start_prim|application started", "application"]];
    const yMarks = 20 + lane * nodes.length + 12;
    evs.forEach((e) => {
      const m = marks.find(([re]) => new RegExp(re).test(e.message));
      if (!m) return;
      s.append(svg("line", { x1: x(e.at), x2: x(e.at), y1: 16, y2: yMarks - 8, stroke: "#c77700", "stroke-dasharray": "3 3" }, svg("title", {}, `${fmtTime(e.at)} ${e.node}: ${e.message}`)));
      if (x(e.at) - lastX < 60) return; // labels would overlap: the line keeps its tooltip
      lastX = x(e.at);
      s.append(svg("text", { x: x(e.at) + 2, y: yMarks + (marks.indexOf(m) % 2) * 12 }, m[1]));
    });
    card.append(s, h("p", { class: "explain", text: "Each lane is a node's state as this page saw it live; dashed marks are timeline steps (detection → decision → VIP → application)." }));
    return card;
  }

  // the module's timeline: every node's entries (asked once when the page opens), and the
  // entries that arrive live from the node the console follows
  function timelineOf(cluster, module) {
    const key = cluster + "/" + module;
    if (!(key in S.fetched)) {
      S.fetched[key] = [];
      api("GET", `/api/clusters/${encodeURIComponent(cluster)}/events?module=${encodeURIComponent(module)}`)
        .then((r) => { if (Array.isArray(r.items)) { S.fetched[key] = r.items; render(); } });
    }
    const seen = new Set();
    const out = [];
    for (const e of [...S.fetched[key], ...(S.events[cluster] || []).filter((e) => e.module === module)]) {
      const id = e.at + "|" + e.node + "|" + e.message;
      if (!seen.has(id)) { seen.add(id); out.push(e); }
    }
    return out.sort((a, b) => a.at - b.at);
  }

  function timelineCard(cluster, module) {
    const card = h("section", { class: "card", "aria-label": "timeline" }, h("h2", { text: "Timeline" }));
    const evs = timelineOf(cluster, module).slice(-200).reverse();
    const ul = h("ul", { class: "timeline" });
    for (const e of evs) ul.append(h("li", {}, h("time", { text: fmtTime(e.at) }), h("b", { text: e.node + " " }), e.message));
    if (!evs.length) ul.append(h("li", { text: "nothing yet" }));
    card.append(ul);
    return card;
  }

  // --- administration: clusters and modules ---------------------------------------------------
  function adminPage() {
    const out = [h("h1", { text: "Clusters & modules" })];
    const admin = may("admin");
    if (!admin) out.push(h("p", { class: "notice", text: `Your role is ${S.me.role}: registering clusters and installing modules needs admin.` }));
    const reg = h("form", { class: "grid card", "aria-label": "register a cluster", onsubmit: async (ev) => {
      ev.preventDefault();
      const f = new FormData(ev.target);
      const r = await api("POST", "/api/registry", JSON.stringify(Object.fromEntries(f.entries())));
      flash(r.message, !r.ok);
    } }, h("h2", { class: "full", text: "Register a cluster" }));
    for (const [id, label, ph] of [["name", "Name", "paris"], ["nodes", "Node addresses", "10.0.0.1,10.0.0.2"], ["token", "API token", "hkt_…"], ["ca", "CA fingerprint", "sha256:…"], ["port", "API port", "7351"]]) {
      reg.append(h("label", { for: "reg-" + id, text: label }), h("input", { id: "reg-" + id, name: id, placeholder: ph, required: id !== "port", disabled: !admin, autocomplete: "off" }));
    }
    reg.append(h("div", { class: "full" }, h("button", { type: "submit", disabled: !admin }, "Register")));
    out.push(reg);
    const names = Object.keys(S.clusters).sort();
    const inst = h("form", { class: "grid card", "aria-label": "install a module", onsubmit: (ev) => { ev.preventDefault(); install(ev.target); } },
      h("h2", { class: "full", text: "Install a module from a .hakit package" }),
      h("label", { for: "inst-cluster", text: "Cluster" }), h("select", { id: "inst-cluster", name: "cluster", disabled: !admin }, names.map((n) => h("option", { value: n, text: n }))),
      h("label", { for: "inst-name", text: "Module name" }), h("input", { id: "inst-name", name: "name", required: true, disabled: !admin }),
      h("label", { for: "inst-file", text: "Package" }), h("input", { id: "inst-file", name: "file", type: "file", accept: ".hakit,.zip", required: true, disabled: !admin }),
      h("div", { class: "full" }, h("button", { type: "submit", disabled: !admin }, "Check and install")),
      h("div", { class: "full", id: "inst-result", "aria-live": "polite" }));
    out.push(inst);
    out.push(M.templatesCard(names, admin));
    const list = h("section", { class: "card" }, h("h2", { text: "Registered clusters" }));
    for (const n of names) {
      list.append(h("p", {}, `${n}: ${S.clusters[n].nodes.join(", ")} `, h("button", { type: "button", class: "quiet", disabled: !admin, onclick: () =>
        confirmThen(`Forget cluster ${n}?`, `the console stops showing ${n}; the cluster itself is not touched`, async () => {
          const r = await api("POST", `/api/registry/${encodeURIComponent(n)}/remove`);
          flash(r.message, !r.ok);
        }) }, "remove")));
    }
    out.push(list);
    return out;
  }

  async function install(form) {
    const f = new FormData(form);
    const file = f.get("file");
    const res = $("#inst-result");
    res.textContent = "checking…";
    const q = `?name=${encodeURIComponent(f.get("name"))}`;
    const r = await api("POST", `/api/clusters/${encodeURIComponent(f.get("cluster"))}/install${q}`, await file.arrayBuffer(), "application/zip");
    res.replaceChildren();
    if (r.problems) {
      res.append(h("p", { class: "error", text: "The package is refused; nothing was installed:" }), h("pre", { class: "problems", text: r.problems.join("\n") }));
      return;
    }
    for (const x of r.results || []) res.append(h("p", { class: x.ok ? "" : "error", text: `${x.node}: ${x.ok ? "installed" : "failed"} — ${x.message}` }));
    if (!r.results) res.append(h("p", { class: "error", text: r.message }));
    flash(r.ok ? `module ${f.get("name")} installed` : `install failed`, !r.ok);
  }

  // --- live data ----------------------------------------------------------------------------
  function record(name, state) {
    const now = Date.now() / 1000;
    for (const [m, mod] of Object.entries(state.modules || {})) {
      const key = name + "/" + m;
      const hist = (S.history[key] = S.history[key] || []);
      for (const [n, ns] of Object.entries(mod.nodes || {})) {
        const last = [...hist].reverse().find((e) => e.node === n);
        if (!last || last.state !== ns.state || last.status !== ns.status) hist.push({ t: now, node: n, state: ns.state, status: ns.status });
      }
      const p = mod.replication && mod.replication.progress;
      const rates = (S.rates[key] = S.rates[key] || []);
      if (p) rates.push([now, (p.rate || 0) / 1048576]);
      else if (rates.length && rates[rates.length - 1][1] !== 0) rates.push([now, 0]);
      if (rates.length > 600) rates.splice(0, rates.length - 600);
      const stats = mod.replication && mod.replication.stats;
      const lags = (S.lags[key] = S.lags[key] || []);
      if (stats && typeof stats.lag === "number") lags.push([now, stats.lag]);
      if (lags.length > 600) lags.splice(0, lags.length - 600);
    }
  }

  // the console pings every 5 s: a stream silent for 15 s is dead (a console that lost power
  // sends no reset), so the page reconnects, maybe to the console's other node (its HA)
  let watchdog = null;
  function connect() {
    const es = new EventSource("/api/stream");
    const live = $("#live");
    const alive = () => {
      clearTimeout(watchdog);
      watchdog = setTimeout(() => {
        es.close();
        live.textContent = "reconnecting…"; live.className = "live off";
        connect();
      }, 15000);
    };
    alive();
    for (const kind of ["ping", "snapshot", "events", "cluster", "removed", "event"]) es.addEventListener(kind, alive);
    es.addEventListener("open", () => { live.textContent = "live"; live.className = "live on"; });
    es.addEventListener("error", async () => {
      live.textContent = "reconnecting…"; live.className = "live off";
      const r = await fetch("/api/me", { credentials: "same-origin" });
      if (r.status === 401) location.href = "/login?why=expired";
    });
    es.addEventListener("expired", () => { es.close(); location.href = "/login?why=expired"; });
    es.addEventListener("snapshot", (m) => {
      const d = JSON.parse(m.data);
      S.clusters = d.clusters;
      for (const [n, c] of Object.entries(S.clusters)) if (c.state) record(n, c.state);
      render();
    });
    es.addEventListener("events", (m) => { const d = JSON.parse(m.data); S.events[d.cluster] = d.events; render(); });
    es.addEventListener("cluster", (m) => {
      const d = JSON.parse(m.data);
      S.clusters[d.cluster] = d.view;
      if (d.view.state) record(d.cluster, d.view.state);
      render();
    });
    es.addEventListener("removed", (m) => { delete S.clusters[JSON.parse(m.data).cluster]; render(); });
    es.addEventListener("event", (m) => {
      const d = JSON.parse(m.data);
      (S.events[d.cluster] = S.events[d.cluster] || []).push(d.event);
      if (S.events[d.cluster].length > 500) S.events[d.cluster].shift();
      if (d.event.module) M.scriptsMayHaveRun(d.cluster, d.event.module);
      render();
    });
  }

  // pages with forms (what is typed must stay) are drawn when their route opens or their data
  // arrives (render(true)), not at every change of the clusters' states
  function page(route) {
    const d = decodeURIComponent;
    let m;
    if (route === "/admin") return [true, adminPage()];
    if ((m = route.match(/^\/c\/([^/]+)\/(audit|tokens|config)$/))) {
      const f = { audit: M.auditPage, tokens: M.tokensPage, config: M.configPage }[m[2]];
      return [true, f(d(m[1]))];
    }
    if ((m = route.match(/^\/c\/([^/]+)\/m\/([^/]+)\/edit$/))) return [true, M.editPage(d(m[1]), d(m[2]))];
    if ((m = route.match(/^\/c\/([^/]+)\/m\/([^/]+)$/))) return [false, modulePage(d(m[1]), d(m[2]))];
    return [false, overview()];
  }

  let pending = false, forced = false;
  const still = (route) => route === "/admin" || /^\/c\/[^/]+\/(audit|tokens|config)$/.test(route) || /\/edit$/.test(route);
  function render(force) {
    forced = forced || force === true;
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => {
      pending = false;
      if ($("#confirm").open) { if (forced) setTimeout(() => render(true), 300); return; } // not under an open dialog
      const route = location.hash.replace(/^#/, "") || "/";
      const focused = document.activeElement && document.activeElement.getAttribute("data-action");
      if (still(route) && view.dataset.route === route && !forced) return; // forms keep what is typed
      forced = false;
      const [, content] = page(route);
      // redraw only what changed to the eye: states arrive every few seconds with new clocks
      const fresh = document.createElement("main");
      fresh.append(...content);
      const shape = (e) => e.innerHTML.replace(/<svg[\s\S]*?<\/svg>/g, "<svg>");
      if (view.dataset.route === route && shape(fresh) === shape(view)) {
        // only the charts moved (they follow the clock): swap them, keep every button in place
        const old = view.querySelectorAll("svg.chart");
        fresh.querySelectorAll("svg.chart").forEach((svgNew, i) => { if (old[i]) old[i].replaceWith(svgNew); });
        return;
      }
      view.replaceChildren(...fresh.childNodes);
      view.dataset.route = route;
      if (focused) { const b = view.querySelector(`[data-action="${focused}"]`); if (b) b.focus(); }
    });
  }

  window.addEventListener("hashchange", () => { view.dataset.route = ""; S.fetched = {}; S.files = {}; S.scripts = {}; M.reset(); render(); view.focus(); });
  (async function start() {
    const r = await fetch("/api/me", { credentials: "same-origin" });
    if (r.status === 401) { location.href = "/login?why=expired"; return; }
    S.me = await r.json();
    $("#who").textContent = `${S.me.user} (${S.me.role})`;
    connect();
    render();
  })();
})();
