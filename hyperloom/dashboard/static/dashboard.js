// hyperloom dashboard: polls data.json and fills the tables and the Bokeh plots' sources.
// #dashboard-check records what was rendered (and any script error) for the browser tests.
(function () {
  "use strict";
  const config = window.DASHBOARD;
  const check = {status: "pending", updates: 0, plots: false, stream_rows: 0, errors: []};

  function writeCheck() {
    const element = document.getElementById("dashboard-check");
    element.dataset.status = check.status;
    element.textContent = JSON.stringify(check);
  }
  window.addEventListener("error", (event) => { check.errors.push(String(event.message)); writeCheck(); });

  function esc(value) {
    return String(value === null || value === undefined ? "" : value).replace(/[&<>"']/g,
      (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
  }
  function bytes(n) {
    if (n === null || n === undefined) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return i === 0 ? n + " B" : n.toFixed(1) + " " + units[i];
  }
  function model(name) {
    for (const doc of (window.Bokeh && window.Bokeh.documents) || []) {
      const found = doc.get_model_by_name(name);
      if (found) return found;
    }
    return null;
  }
  function setStatus(text, bad) {
    const element = document.getElementById("status");
    element.textContent = text;
    element.className = bad ? "bad" : "ok";
  }

  function renderProgress(progress) {
    if (!progress.length) {
      return '<p class="empty">No client has submitted tasks yet.</p>';
    }
    return progress.map((client) => {
      const rows = client.groups.map((g) => {
        const total = Math.max(g.total, 1);
        const canceled = g.canceled ? ` (${g.canceled} canceled)` : "";
        return `<tr class="group" data-client="${client.client}" data-group="${esc(g.name)}">` +
          `<td class="name">${esc(g.name)}</td>` +
          `<td class="bar"><div class="barbox"><div class="fin" style="width:${100 * g.finished / total}%;background:${esc(g.color)}"></div>` +
          `<div class="fail" style="width:${100 * g.failed / total}%"></div></div></td>` +
          `<td class="finished">${g.finished}</td><td class="failed">${g.failed}</td>` +
          `<td class="total">${g.total}</td><td class="canceled">${esc(canceled)}</td></tr>`;
      }).join("");
      return `<div class="client" data-client="${client.client}"><h3>client ${client.client}: ` +
        `<span class="done">${client.done}</span> of <span class="total">${client.total}</span> tasks done</h3>` +
        `<table><thead><tr><th>label group</th><th></th><th>finished</th><th>failed</th><th>total</th><th></th></tr></thead>` +
        `<tbody>${rows}</tbody></table></div>`;
    }).join("");
  }

  function renderStates(tasks) {
    return Object.entries(tasks).map(([name, count]) =>
      `<tr data-state="${esc(name)}"><td>${esc(name)}</td><td class="count">${count}</td></tr>`).join("");
  }

  function renderWorkers(workers) {
    return workers.map((w) => {
      const cpu = (w.cpu_percent === null || w.cpu_percent === undefined) ? "–" : w.cpu_percent + " %";
      return `<tr data-worker="${w.id}" data-state="${esc(w.state)}">` +
        `<td class="id">${w.id}</td><td class="host">${esc(w.hostname)}</td>` +
        `<td class="address">${esc(w.address)}</td><td class="state">${esc(w.state)}${w.why ? " (" + esc(w.why) + ")" : ""}</td>` +
        `<td class="cores" data-cpus-used="${w.cpus_used}">${Math.min(w.cpus_used, w.cpus)} / ${w.cpus}</td><td class="running">${w.running}</td>` +
        `<td class="finished">${w.tasks_finished}</td><td class="held" data-bytes="${w.bytes_held}">${bytes(w.bytes_held)}</td>` +
        `<td class="cpu">${cpu}</td><td class="memory">${bytes(w.memory)}</td>` +
        `<td class="received" data-bytes="${w.bytes_received}">${bytes(w.bytes_received)}</td>` +
        `<td class="sent" data-bytes="${w.bytes_sent}">${bytes(w.bytes_sent)}</td></tr>`;
    }).join("");
  }

  function renderUnplaceable(entries) {
    if (!entries.length) return '<tr><td class="empty">none</td></tr>';
    return entries.map((u) =>
      `<tr class="unplaceable" data-client="${u.client}" data-id="${u.id}"><td>client ${u.client} task ${u.id}</td>` +
      `<td class="name">${esc(u.type)}</td><td>${u.n_cpus} cpus</td><td class="reason">${esc(u.reason)}</td></tr>`).join("");
  }

  function renderFailures(failures) {
    if (!failures.length) return '<li class="empty">none</li>';
    return failures.map((f) =>
      `<li class="failure" data-client="${f.client}" data-id="${f.id}"><b>client ${f.client} task ${f.id}</b>` +
      `${f.label ? " (" + esc(f.label) + ")" : ""} on ${esc(f.worker)}: <span class="message">${esc(f.message)}</span></li>`).join("");
  }

  function renderSlurm(slurm) {
    document.getElementById("slurm-error").textContent = slurm.error || "";
    if (!slurm.jobs.length) return '<tr><td class="empty" colspan="4">no jobs</td></tr>';
    return slurm.jobs.map((j) =>
      `<tr class="job" data-job="${esc(j.id)}"><td>${esc(j.id)}</td><td class="state">${esc(j.state)}</td>` +
      `<td class="name">${esc(j.name)}</td><td class="name">${esc(j.nodes)}</td></tr>`).join("");
  }

  function renderPlots(data) {
    const sources = {history: data.history, stream: data.stream, stream_failed: data.stream_failed,
                     transfers: data.transfers};
    let found = 0;
    for (const [name, columns] of Object.entries(sources)) {
      const source = model(name);
      if (source) { source.data = columns; found += 1; }
    }
    const lanes = model("lanes");
    if (lanes) {
      const names = data.lanes.length ? data.lanes : [""];
      if (JSON.stringify(lanes.factors) !== JSON.stringify(names)) lanes.factors = names;
      found += 1;
    }
    check.plots = found === 5;
    check.stream_rows = data.stream.left.length;
  }

  function render(data) {
    setStatus(data.status, data.status !== "connected");
    if (data.updated) {
      document.getElementById("updated").textContent =
        "updated " + new Date(data.updated * 1000).toLocaleTimeString();
    }
    if (data.slurm) document.querySelector("#slurm tbody").innerHTML = renderSlurm(data.slurm);
    if (!data.tasks) return;
    document.getElementById("progress").innerHTML = renderProgress(data.progress);
    document.getElementById("states-now").innerHTML = renderStates(data.tasks);
    document.querySelector("#workers tbody").innerHTML = renderWorkers(data.workers);
    document.querySelector("#unplaceable tbody").innerHTML = renderUnplaceable(data.unplaceable);
    document.getElementById("failures").innerHTML = renderFailures(data.failures);
    renderPlots(data);
    check.updates += 1;
    check.status = check.plots ? "rendered" : "pending";
  }

  async function poll() {
    try {
      const query = config.token ? "?token=" + encodeURIComponent(config.token) : "";
      const response = await fetch("/data.json" + query, {cache: "no-store"});
      if (!response.ok) throw new Error("HTTP " + response.status);
      render(await response.json());
    } catch (error) {
      check.errors.push(String(error));
      setStatus("dashboard unreachable: " + error.message, true);
    } finally {
      writeCheck();
      setTimeout(poll, config.interval);
    }
  }
  poll();
})();
