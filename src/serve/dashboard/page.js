// The dashboard's script: no framework, no network but this service. It starts from a
// snapshot (`event: snapshot`) and applies coalesced updates (`event: update`) from
// /dashboard/events; a page that reconnects starts again from a snapshot.
'use strict';

const $ = (id) => document.getElementById(id);
const workers = new Map();
let recent = [];
let pool = null;
const RECENT_SHOWN = 50;

function text(value) {
  if (value === undefined || value === null) return '';
  return typeof value === 'string' ? value : JSON.stringify(value);
}

function age(since) {
  const s = Math.max(0, (Date.now() - since) / 1000);
  return s < 60 ? `${s.toFixed(1)} s` : `${Math.floor(s / 60)} min ${Math.floor(s % 60)} s`;
}

function cell(row, value, cls) {
  const td = document.createElement('td');
  td.textContent = value;
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function renderPool() {
  if (!pool) return;
  const state = $('pool-state');
  state.textContent = pool.state + (pool.pausedBy ? ` (${pool.pausedBy})` : '');
  state.className = `badge ${pool.state === 'running' ? 'good' : pool.state === 'paused' ? 'bad' : 'warn'}`;
  const breaker = pool.breaker || {};
  const b = $('breaker');
  b.textContent = `breaker ${breaker.state || 'closed'}` + (breaker.trips ? `, ${breaker.trips} trip(s)` : '') +
    (breaker.retryAt ? `, retry at ${new Date(breaker.retryAt).toLocaleTimeString()}` : '');
  b.className = `badge ${breaker.state && breaker.state !== 'closed' ? 'bad' : 'good'}`;
  $('containment').textContent = `containment: ${pool.containment || 'not yet known'}`;
  const byState = {};
  for (const w of workers.values()) byState[w.state] = (byState[w.state] || 0) + 1;
  const live = [...workers.values()].filter((w) => w.state !== 'reaped').length;
  const counters = [
    ['live workers', live],
    ['running', byState.running || 0],
    ['queued', pool.queued],
    ['in flight', pool.inFlight],
    ['resolved', pool.outcomes.resolved || 0],
    ['failed', Object.entries(pool.outcomes).filter(([k]) => k !== 'resolved').reduce((n, [, v]) => n + v, 0)],
    ['spawned', pool.spawned],
    ['reaped', pool.reaped],
  ];
  for (const [kind, n] of Object.entries(pool.outcomes)) if (kind !== 'resolved') counters.push([`failed: ${kind}`, n]);
  const box = $('counters');
  box.replaceChildren(...counters.map(([label, value]) => {
    const div = document.createElement('div');
    div.className = 'counter';
    div.dataset.counter = label;
    const b = document.createElement('b');
    b.textContent = String(value);
    const span = document.createElement('span');
    span.textContent = label;
    div.append(b, span);
    return div;
  }));
  highlight('pool', { [pool.state]: 1 });
  highlight('worker', byState);
}

/** Mark the states in use on a statechart, with how many workers are in each. */
function highlight(machine, counts) {
  const svg = document.querySelector(`svg[data-machine="${machine}"]`);
  if (!svg) return;
  const totals = {};
  for (const [state, n] of Object.entries(counts)) {
    const parts = state.split('.');
    for (let i = 1; i <= parts.length; i++) {
      const path = parts.slice(0, i).join('.');
      totals[path] = (totals[path] || 0) + n;
    }
  }
  for (const g of svg.querySelectorAll('g.state')) {
    const n = totals[g.dataset.state] || 0;
    g.classList.toggle('active', n > 0);
    const count = g.querySelector('text.count');
    if (count) count.textContent = machine === 'worker' && n > 0 ? String(n) : '';
  }
}

/** Rows by worker id: updated in place, so a button under the pointer stays the same element. */
const rows = new Map();

function workerRow(w) {
  let row = rows.get(w.id);
  if (!row) {
    row = document.createElement('tr');
    row.dataset.worker = w.id;
    for (const cls of ['id', 'state', 'pid', 'task', 'attempt', 'progress', 'age', 'actions']) {
      const td = document.createElement('td');
      td.className = cls;
      row.appendChild(td);
    }
    const button = document.createElement('button');
    button.className = 'cancel';
    button.textContent = 'cancel';
    button.onclick = () => cancel(row.dataset.task);
    row.querySelector('td.actions').appendChild(button);
    rows.set(w.id, row);
  }
  const set = (cls, value) => {
    const td = row.querySelector(`td.${cls}`);
    if (td.textContent !== value) td.textContent = value;
    if (cls === 'task' || cls === 'progress') td.title = value;
  };
  row.className = `state-${w.state.split('.')[0]}`;
  row.dataset.state = w.state;
  row.dataset.task = w.taskId || '';
  set('id', w.id);
  set('state', w.state);
  set('pid', text(w.pid));
  set('task', text(w.taskId));
  set('attempt', text(w.attempt));
  set('progress', text(w.progress));
  set('age', age(w.since));
  row.querySelector('button.cancel').hidden = !(w.taskId && w.state !== 'reaped');
  return row;
}

function renderWorkers() {
  const body = $('workers-body');
  const list = [...workers.values()].sort((a, b) => a.since - b.since);
  $('workers-empty').hidden = list.length > 0;
  for (const [id, row] of rows) {
    if (!workers.has(id)) {
      row.remove();
      rows.delete(id);
    }
  }
  list.forEach((w, i) => {
    const row = workerRow(w);
    if (body.children[i] !== row) body.insertBefore(row, body.children[i] || null);
  });
}

function renderRecent() {
  const body = $('recent-body');
  $('recent-empty').hidden = recent.length > 0;
  body.replaceChildren(...recent.slice().reverse().map((o) => {
    const row = document.createElement('tr');
    row.dataset.task = o.id;
    row.dataset.outcome = o.status === 'resolved' ? 'resolved' : o.kind;
    cell(row, new Date(o.at).toLocaleTimeString());
    cell(row, o.id);
    cell(row, o.status === 'resolved' ? 'resolved' : `failed: ${o.kind}`);
    cell(row, String(o.attempts));
    cell(row, `${o.durationMs} ms`);
    cell(row, o.message || '', 'message');
    return row;
  }));
}

function render() {
  renderPool();
  renderWorkers();
  renderRecent();
}

async function cancel(id) {
  if ($('token').value) sessionStorage.setItem('tidepool-token', $('token').value);
  const t = token();
  const headers = t ? { authorization: `Bearer ${t}` } : {};
  const res = await fetch(`/tasks/${encodeURIComponent(id)}`, { method: 'DELETE', headers });
  let body = '';
  try { body = JSON.stringify(await res.json()); } catch { body = res.statusText; }
  $('notice').textContent = `cancel ${id}: ${res.status} ${body}`;
}

$('token-form').addEventListener('submit', (event) => {
  event.preventDefault();
  $('token').dispatchEvent(new Event('change'));
});
$('cancel-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const id = $('cancel-id').value.trim();
  if (id) cancel(id);
});
$('token').value = sessionStorage.getItem('tidepool-token') || '';

function token() {
  return $('token').value || sessionStorage.getItem('tidepool-token') || '';
}

function setStatus(text, cls) {
  const status = $('connection');
  status.textContent = text;
  status.className = `badge ${cls}`;
}

function apply(type, data) {
  const message = JSON.parse(data);
  if (type === 'snapshot') {
    workers.clear();
    for (const w of message.workers) workers.set(w.id, w);
    recent = message.recent;
  } else if (type === 'update') {
    for (const w of message.workers) workers.set(w.id, w);
    for (const id of message.gone) workers.delete(id);
    recent = recent.concat(message.outcomes).slice(-RECENT_SHOWN);
  } else {
    return;
  }
  pool = message.pool;
  render();
}

// Server-Sent Events read with fetch(), not EventSource: a token goes in a header, never in a
// URL. Each (re)connection starts from a snapshot.
async function connect() {
  for (;;) {
    try {
      const t = token();
      const res = await fetch('/dashboard/events', { headers: t ? { authorization: `Bearer ${t}` } : {}, cache: 'no-store' });
      if (res.status === 401) {
        setStatus('token needed', 'bad');
        $('notice').textContent = 'This service has a token: enter it (Access and cancel, below) to see its workers.';
        await new Promise((resolve) => $('token').addEventListener('change', resolve, { once: true }));
        sessionStorage.setItem('tidepool-token', $('token').value);
        continue;
      }
      if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}`);
      setStatus('live', 'good');
      if ($('notice').textContent.startsWith('This service has a token')) $('notice').textContent = '';
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf('\n\n')) !== -1) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          let type = 'message';
          const data = [];
          for (const line of block.split('\n')) {
            if (line.startsWith('event: ')) type = line.slice(7);
            else if (line.startsWith('data: ')) data.push(line.slice(6));
          }
          if (data.length > 0) apply(type, data.join('\n'));
        }
      }
    } catch {
      // the service went away or restarted: try again
    }
    setStatus('reconnecting', 'bad');
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

connect();
// Ages move on between updates.
setInterval(renderWorkers, 1000);
