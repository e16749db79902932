// Switchyard console: live updates over server-sent events. Text only ever goes into the page
// through textContent (never as HTML), so nothing a tenant sends can run here.
"use strict";

function liveState(text, ok) {
  const el = document.getElementById("live-state");
  if (el) {
    el.textContent = text;
    el.className = ok ? "live" : "live down";
  }
}

function follow(url, handlers) {
  const source = new EventSource(url);
  source.onopen = () => liveState("live", true);
  source.onerror = () => liveState("reconnecting…", false);
  for (const [name, handle] of Object.entries(handlers)) {
    source.addEventListener(name, (e) => handle(JSON.parse(e.data), source));
  }
  return source;
}

function overview(table) {
  follow(table.dataset.live, {
    tenants: (rows) => {
      for (const row of rows) {
        const tr = table.querySelector(`tr[data-tenant="${CSS.escape(row.tenant)}"]`);
        if (!tr) continue;
        for (const field of ["rate", "limit", "backlog", "admission", "dlq", "dlq_inflow"]) {
          const td = tr.querySelector(`[data-field="${field}"]`);
          if (td) td.textContent = String(row[field]);
        }
        const quota = tr.querySelector('[data-field="quota_pct"]');
        if (quota) quota.textContent = `${row.quota_pct}%`;
        const admission = tr.querySelector('[data-field="admission"]');
        if (admission) admission.className = row.admission;
        const destinations = tr.querySelector('[data-field="destinations"]');
        if (destinations) {
          destinations.className = row.destinations_ok ? "open" : "closed";
          const link = destinations.querySelector("a");
          if (link) link.textContent = String(row.destinations);
        }
        for (const chart of ["rate", "backlog", "dlq_inflow"]) {
          const line = tr.querySelector(`polyline[data-chart="${chart}"]`);
          if (line) line.setAttribute("points", String(row.charts[chart]));
        }
      }
    },
  });
}

function cell(text) {
  const td = document.createElement("td");
  td.textContent = String(text);
  return td;
}

function tail(table) {
  const body = table.querySelector("tbody");
  follow(table.dataset.live, {
    entry: (row) => {
      if (body.querySelector(`tr[data-seq="${row.seq}"]`)) return;
      const tr = document.createElement("tr");
      tr.dataset.seq = String(row.seq);
      tr.className = "new";
      const link = document.createElement("a");
      link.href = `/ui/dlq/${row.seq}`;
      link.textContent = String(row.seq);
      const first = document.createElement("td");
      first.appendChild(link);
      tr.appendChild(first);
      for (const value of [row.stored_at, row.tenant, row.stage, row.platform]) {
        tr.appendChild(cell(value));
      }
      const code = cell(row.code);
      code.className = "code";
      tr.appendChild(code);
      tr.appendChild(cell(row.attempts));
      const reason = cell(row.reason);
      reason.className = "reason";
      tr.appendChild(reason);
      body.appendChild(tr);
      const empty = document.getElementById("empty");
      if (empty) empty.hidden = true;
    },
  });
}

function job(box) {
  follow(box.dataset.live, {
    job: (job, source) => {
      document.getElementById("job-state").textContent = job.state;
      const bar = document.getElementById("job-bar");
      bar.value = job.pct;
      bar.textContent = `${job.pct}%`;
      document.getElementById("job-progress").textContent =
        `${job.handled} of ${job.total} handled: ${job.replayed} replayed, ${job.kept} kept, ${job.missing} gone`;
      if (job.finished) {
        source.close();
        liveState("", true);
        const cancel = document.getElementById("cancel-form");
        if (cancel) cancel.hidden = true;
      }
    },
  });
}

function tabs() {
  const buttons = document.querySelectorAll(".tabs button[data-tab]");
  for (const button of buttons) {
    button.addEventListener("click", () => {
      for (const pane of document.querySelectorAll("pre.tab")) {
        pane.hidden = pane.dataset.tab !== button.dataset.tab;
      }
    });
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const tenants = document.querySelector("#tenants[data-live]");
  if (tenants) overview(tenants);
  const entries = document.querySelector("#entries[data-live]");
  if (entries) tail(entries);
  const box = document.querySelector("#job[data-live]");
  if (box) job(box);
  tabs();
});
