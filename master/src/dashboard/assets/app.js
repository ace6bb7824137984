// vgas dashboard: hash routes, one server-sent event stream at a time, DOM built from data
// (textContent only, never HTML from a view). No console output, no uncaught errors.
'use strict';
(() => {
  const OUTPUT_CAP = 1 << 20; // characters of task output kept on screen
  const main = document.getElementById('main');
  const conn = document.getElementById('conn');
  const faultEl = document.getElementById('fault');
  let es = null; // the one open EventSource
  let routeKey = '';
  let retryTimer = 0;
  let uptime = null; // {ms, at}: the last overview's uptime, ticking client-side

  // ---- small helpers
  const num = (v) => { const n = typeof v === 'number' ? v : parseFloat(v); return Number.isFinite(n) ? n : 0; };
  const arr = (v) => (Array.isArray(v) ? v : []);
  const str = (v) => (v == null ? '' : String(v));
  const obj = (v) => (v && typeof v === 'object' && !Array.isArray(v) ? v : {});
  const has = (v) => v !== undefined && v !== null;

  function fault(msg) {
    faultEl.textContent = msg ? 'dashboard error: ' + msg : '';
    faultEl.classList.toggle('hidden', !msg);
  }
  function guard(f) {
    return (...a) => { try { return f(...a); } catch (e) { fault(str(e && e.message ? e.message : e)); return undefined; } };
  }
  const parse = (s) => { try { return obj(JSON.parse(s)); } catch (_) { return {}; } };

  function add(el, kids) {
    for (const k of kids) {
      if (k == null || k === false) continue;
      if (Array.isArray(k)) add(el, k);
      else el.append(k instanceof Node ? k : String(k));
    }
  }
  function h(tag, attrs, ...kids) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v == null || v === false) continue;
      if (k === 'class') el.className = v;
      else if (k === 'on') for (const [ev, f] of Object.entries(v)) el.addEventListener(ev, guard(f));
      else el.setAttribute(k, v === true ? '' : String(v));
    }
    add(el, kids);
    return el;
  }
  const setText = (id, t) => { const e = document.getElementById(id); if (e) e.textContent = t; };

  // ---- formatting
  const fmtInt = (v) => Math.round(num(v)).toLocaleString('en-US');
  const pad2 = (n) => String(n).padStart(2, '0');
  function fmtMs(v) {
    const ms = Math.max(0, num(v));
    if (ms < 1000) return Math.round(ms) + ' ms';
    const s = ms / 1000;
    if (s < 60) return s.toFixed(1) + ' s';
    const m = Math.floor(s / 60);
    if (m < 60) return m + 'm ' + pad2(Math.floor(s % 60)) + 's';
    const hr = Math.floor(m / 60);
    if (hr < 24) return hr + 'h ' + pad2(m % 60) + 'm';
    return Math.floor(hr / 24) + 'd ' + (hr % 24) + 'h';
  }
  function fmtMiB(v) {
    const mb = num(v);
    if (mb < 1024) return fmtInt(mb) + ' MiB';
    if (mb < 1048576) return (mb / 1024).toFixed(1) + ' GiB';
    return (mb / 1048576).toFixed(2) + ' TiB';
  }
  function fmtUsd(v) {
    const x = num(v), a = Math.abs(x);
    return '$' + (a === 0 ? '0.00' : a >= 0.1 ? x.toFixed(2) : a >= 0.01 ? x.toFixed(4) : x.toFixed(6));
  }
  const fmtRate = (v) => { const x = num(v); return x === 0 ? '0' : x < 10 ? x.toFixed(2) : x.toFixed(1); };
  const fmtClock = (ms) => (num(ms) > 0 ? new Date(num(ms)).toLocaleTimeString() : '—');
  const list = (v) => arr(v).map(str).join(', ') || '—';

  // ---- building blocks
  const td = (content, cls) => h('td', { class: cls }, content);
  const tdn = (content, cls) => h('td', { class: 'n' + (cls ? ' ' + cls : '') }, content);
  // heads: labels; a leading '>' right-aligns the column (numbers).
  function table(id, heads, rows, empty) {
    const ths = heads.map((l) => (l[0] === '>' ? h('th', { class: 'n' }, l.slice(1)) : h('th', null, l)));
    const body = rows.length ? rows : h('tr', { class: 'none' }, h('td', { colspan: heads.length }, empty || 'none'));
    return h('div', { class: 'tbl' }, h('table', { id }, h('thead', null, h('tr', null, ths)), h('tbody', null, body)));
  }
  const section = (title, ...content) => h('section', { class: 'block' }, h('h2', null, title), content);
  // A bar of coloured segments: parts are [count, class, title], against total.
  function bar(parts, total, cls) {
    const b = h('div', { class: 'bar' + (cls ? ' ' + cls : '') });
    const t = Math.max(num(total), parts.reduce((a, p) => a + Math.max(0, num(p[0])), 0));
    for (const [n, c, title] of parts) {
      if (num(n) <= 0 || t <= 0) continue;
      const s = h('span', { class: 'seg ' + c, title: title + ': ' + fmtInt(n) });
      s.style.width = ((num(n) / t) * 100).toFixed(2) + '%';
      b.append(s);
    }
    return b;
  }
  const taskLink = (id) => h('a', { href: '#/task/' + encodeURIComponent(str(id)) }, str(id));
  const since = (ms) => h('span', { 'data-since': num(ms) }, fmtMs(Date.now() - num(ms)));
  const tag = (text, cls) => h('span', { class: 'tag ' + (cls || '') }, text);
  const facts = (pairs) => h('dl', { class: 'facts' }, pairs.map(([k, v, id]) => h('div', { class: 'fact' }, h('dt', null, k), h('dd', { id }, v))));

  function pager(p, r) {
    p = obj(p);
    const page = num(p.page), pages = Math.max(1, num(p.pages));
    const go = (n) => { location.hash = '#/' + r.path + (n > 0 ? '?page=' + n : ''); };
    return h('div', { class: 'pager' },
      h('button', { id: 'page-prev', type: 'button', disabled: page <= 0, on: { click: () => go(page - 1) } }, '‹ Prev'),
      h('span', { id: 'page-label' }, `page ${page + 1} of ${pages} (${fmtInt(p.total)} total)`),
      h('button', { id: 'page-next', type: 'button', disabled: page + 1 >= pages, on: { click: () => go(page + 1) } }, 'Next ›'));
  }

  // ---- overview strip (kept across pages; the task page shows the last one seen)
  function overview(o) {
    o = obj(o);
    setText('worker-count', String(num(o.workers_live)));
    setText('abnormal-count', String(num(o.workers_abnormal)));
    setText('slots-busy', num(o.slots_busy) + ' / ' + num(o.slots));
    setText('queue-depth', String(num(o.queue_depth)));
    setText('queue-capacity', has(o.queue_capacity) ? 'of ' + fmtInt(o.queue_capacity) : '');
    setText('in-flight', String(num(o.in_flight)));
    setText('tasks-finished', String(num(o.tasks_finished)));
    setText('tasks-accepted', has(o.tasks_accepted) ? 'of ' + fmtInt(o.tasks_accepted) + ' accepted' : '');
    setText('gpu-leases', num(o.gpu_leases) + ' / ' + num(o.gpus));
    uptime = has(o.uptime_ms) ? { ms: num(o.uptime_ms), at: Date.now() } : null;
    setText('uptime', uptime ? fmtMs(uptime.ms) : '–');
    document.getElementById('tile-abnormal').classList.toggle('warn', num(o.workers_abnormal) > 0);
  }

  // ---- swarm
  function renderSwarm(v, r) {
    const workers = arr(v.workers).map(obj).map((w) => {
      const full = num(w.slots) > 0 && num(w.busy) >= num(w.slots);
      return h('tr', { 'data-worker': str(w.id), class: w.state === 'draining' ? 'dim' : null },
        td(str(w.id), 'id'), td(str(w.hostname)),
        td(tag(str(w.state) || '?', w.state === 'live' ? 'ok' : 'warn')),
        td([bar([[w.busy, 'busy', 'busy slots']], w.slots, full ? 'full' : ''), h('span', { class: 'muted' }, ` ${num(w.busy)} / ${num(w.slots)}`)], 'load'),
        tdn(fmtInt(w.cpus)), tdn(fmtMiB(w.memory_mb)), td(list(w.gpus), 'small'),
        td(list(w.toolchains), 'small'), td(list(w.capabilities), 'small'), td(str(w.isolation) || '—'),
        tdn(fmtMs(w.last_seen_ms_ago)), tdn(fmtInt(w.tasks_done)));
    });
    const abnormal = arr(v.abnormal).map(obj).map((a) => h('tr', { 'data-worker': str(a.id) },
      td(str(a.id), 'id'), td(str(a.reason), 'bad'), tdn(fmtMs(a.last_seen_ms_ago))));
    const unjoined = arr(v.unjoined).map(obj).map((u) => h('tr', { 'data-node': str(u.node_id) },
      td(str(u.node_id), 'id'), td(str(u.role)), td(list(u.addresses), 'small'), td(str(u.reason))));
    return [
      section('Workers', pager(v.paging, r), table('workers',
        ['Worker', 'Host', 'State', 'Load', '>CPUs', '>Memory', 'GPUs', 'Toolchains', 'Capabilities', 'Isolation', '>Last seen', '>Done'],
        workers, 'no live workers')),
      section('Abnormal', table('abnormal', ['Worker', 'Reason', '>Last seen'], abnormal)),
      section('Seen on the LAN, not joined', table('unjoined', ['Node', 'Role', 'Addresses', 'Reason'], unjoined)),
    ];
  }

  // ---- tasks
  function renderTasks(v, r) {
    const row = (t, cells) => h('tr', { 'data-task': str(t.id) }, td(taskLink(t.id), 'id'), td(str(t.kind)), cells);
    const queued = arr(v.queued).map(obj).map((t) => row(t, [tdn(num(t.attempt)), tdn(since(t.since_ms))]));
    const running = arr(v.running).map(obj).map((t) => row(t, [td(str(t.worker) || '—'), tdn(num(t.attempt)), tdn(since(t.since_ms))]));
    const finished = arr(v.finished).map(obj).map((t) => row(t, [
      td(str(t.worker) || '—'), tdn(num(t.attempt)),
      td(str(t.outcome) || '—', t.ok === true ? 'ok' : t.ok === false ? 'bad' : null),
      tdn(has(t.duration_ms) ? fmtMs(t.duration_ms) : '—'), tdn(fmtClock(t.since_ms))]));
    return [
      section('Running', pager(v.paging, r), table('running', ['Task', 'Kind', 'Worker', '>Attempt', '>Running for'], running)),
      section('Queued', table('queued', ['Task', 'Kind', '>Attempt', '>Waiting'], queued)),
      section('Finished', table('finished', ['Task', 'Kind', 'Worker', '>Attempt', 'Outcome', '>Duration', '>Finished at'], finished)),
    ];
  }

  // ---- task page (its own stream: task, output, retrying, end)
  function openTask(r) {
    const t = {
      state: h('span', { id: 'task-state', class: 'tag' }, '…'),
      outcome: h('dd', { id: 'task-outcome' }),
      note: h('p', { id: 'task-note', class: 'note hidden' }),
      dropped: h('p', { id: 'task-dropped', class: 'muted hidden' }, 'earlier output dropped: only the last 1 MB is kept'),
      pre: h('pre', { id: 'task-output' }),
      total: 0,
    };
    const dl = facts([['Kind', '—', 'task-kind'], ['Worker', '—', 'task-worker'], ['Attempt', '—', 'task-attempt'],
      ['Accepted', '—', 'task-accepted'], ['Duration', '—', 'task-duration']]);
    t.outcomeFact = h('div', { class: 'fact hidden' }, h('dt', null, 'Outcome'), t.outcome);
    dl.append(t.outcomeFact);
    main.replaceChildren(h('h1', null, 'Task ', h('code', { id: 'task-id' }, r.id), ' ', t.state), dl, t.note,
      h('h2', null, 'Output'), t.dropped, t.pre);
    const src = new EventSource('api/task/' + encodeURIComponent(r.id) + '/stream');
    es = src;
    const mine = () => es === src;
    src.addEventListener('open', () => { if (mine()) badge(''); });
    src.addEventListener('task', guard((ev) => { if (mine()) { badge(''); taskRow(t, parse(ev.data)); } }));
    src.addEventListener('overview', guard((ev) => { if (mine()) overview(parse(ev.data)); }));
    src.addEventListener('output', guard((ev) => {
      if (!mine()) return;
      const c = parse(ev.data);
      appendOutput(t, str(c.data), c.stream === 'stderr');
    }));
    src.addEventListener('retrying', guard((ev) => {
      if (!mine()) return;
      const c = parse(ev.data);
      t.pre.replaceChildren();
      t.total = 0;
      t.dropped.classList.add('hidden');
      note(t, `retrying (attempt ${num(c.attempt)})${c.reason ? ': ' + str(c.reason) : ''}; earlier output cleared`);
    }));
    src.addEventListener('end', () => {
      src.close();
      if (mine()) badge('');
    });
    src.addEventListener('error', () => {
      if (!mine()) return;
      if (src.readyState === EventSource.CLOSED) {
        badge('disconnected');
        note(t, 'the task stream was refused (unknown task, or signed out)');
      } else badge('reconnecting');
    });
  }
  function note(t, text) { t.note.textContent = text; t.note.classList.remove('hidden'); }
  function taskRow(t, row) {
    const state = str(row.state) || '?';
    t.state.textContent = state;
    t.state.className = 'tag ' + (state === 'finished' ? (row.ok === false ? 'bad' : 'ok') : state === 'running' ? 'run' : '');
    setText('task-kind', str(row.kind) || '—');
    setText('task-worker', str(row.worker) || '—');
    setText('task-attempt', String(num(row.attempt)));
    setText('task-accepted', fmtClock(row.accepted_ms));
    setText('task-duration', has(row.duration_ms) ? fmtMs(row.duration_ms) : '—');
    t.outcome.textContent = str(row.outcome);
    t.outcome.className = row.ok === true ? 'ok' : row.ok === false ? 'bad' : '';
    t.outcomeFact.classList.toggle('hidden', !has(row.outcome));
  }
  function appendOutput(t, text, isErr) {
    if (!text) return;
    const pre = t.pre;
    const atBottom = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 8;
    const last = pre.lastChild;
    if (isErr) {
      if (last && last.nodeType === 1 && last.firstChild) last.firstChild.appendData(text);
      else pre.append(h('span', { class: 'stderr' }, text));
    } else if (last && last.nodeType === 3) last.appendData(text);
    else pre.append(document.createTextNode(text));
    t.total += text.length;
    let excess = t.total - OUTPUT_CAP;
    while (excess > 0 && pre.firstChild) {
      const first = pre.firstChild;
      const node = first.nodeType === 3 ? first : first.firstChild;
      const len = node ? node.length : 0;
      if (len <= excess) { first.remove(); excess -= len; t.total -= len; }
      else { node.deleteData(0, excess); t.total -= excess; excess = 0; }
      t.dropped.classList.remove('hidden');
    }
    if (atBottom) pre.scrollTop = pre.scrollHeight;
  }

  // ---- builds
  const SEGS = [['on_workers', 'worker', 'on workers'], ['from_cache', 'cache', 'from cache'], ['here', 'here', 'here'],
    ['failed', 'failed', 'failed'], ['compiling', 'compiling', 'compiling'], ['queued', 'queued', 'queued']];
  const buildBar = (b) => bar(SEGS.map(([k, c, l]) => [b[k], c, l]), b.units, 'stack');
  const legend = () => h('div', { class: 'legend' }, SEGS.map(([, c, l]) => h('span', null, h('i', { class: 'sw ' + c }), l)));
  function buildState(b) {
    if (!b.finished) return tag('running', 'run');
    if (!has(b.exit_code)) return tag('finished', num(b.failed) > 0 ? 'bad' : 'ok');
    return tag('exit ' + num(b.exit_code), num(b.exit_code) === 0 ? 'ok' : 'bad');
  }
  function renderBuilds(v) {
    const rows = arr(v.builds).map(obj).map((b) => h('tr', { 'data-build': str(b.id) },
      td(h('a', { href: '#/build/' + encodeURIComponent(str(b.id)) }, str(b.id)), 'id'), td(fmtClock(b.started_ms)),
      td(buildState(b)), tdn(fmtInt(b.units)), td(buildBar(b), 'wide'),
      tdn(fmtInt(b.on_workers)), tdn(fmtInt(b.from_cache)), tdn(fmtInt(b.here)), tdn(fmtInt(b.failed)), tdn(fmtMs(b.wall_ms))));
    return [section('Builds', legend(), table('builds',
      ['Build', 'Started', 'State', '>Units', 'Progress', '>Workers', '>Cache', '>Here', '>Failed', '>Wall'], rows, 'no builds yet'))];
  }
  function renderBuild(v, r) {
    const b = obj(v.build);
    const head = h('h1', null, 'Build ', h('code', null, r.id), ' ', str(b.id) ? buildState(b) : null);
    if (!str(b.id)) return [head, h('p', { class: 'muted', id: 'build-missing' }, 'no such build (not started yet, or aged out)')];
    const units = arr(v.units).map(obj);
    // Lanes: every worker that compiled units, plus where units compile now.
    const lanes = new Map();
    for (const [w, n] of Object.entries(obj(b.per_worker))) lanes.set(w, { n: num(n), chips: [] });
    const local = { n: num(b.here), chips: [] };
    for (const u of units) {
      if (u.state !== 'compiling') continue;
      const w = str(u.worker);
      if (!w) { local.chips.push(u); continue; }
      if (!lanes.has(w)) lanes.set(w, { n: 0, chips: [] });
      lanes.get(w).chips.push(u);
    }
    const lane = (name, l, cls) => h('div', { class: 'lane' + (cls ? ' ' + cls : ''), 'data-lane': name },
      h('div', { class: 'lane-head' }, h('b', null, name), h('span', { class: 'muted' }, fmtInt(l.n) + ' done')),
      h('div', { class: 'chips' }, l.chips.length ? l.chips.map((u) => h('span', { class: 'chip', title: str(u.segment) },
        str(u.segment).split('/').pop())) : h('span', { class: 'muted' }, 'idle')));
    const boxes = [...lanes.entries()].sort((a, b2) => a[0].localeCompare(b2[0])).map(([w, l]) => lane(w, l));
    if (local.n > 0 || local.chips.length) boxes.push(lane('here (master)', local, 'local'));
    const unitRows = units.map((u) => {
      const origin = str(u.origin);
      const cls = u.state === 'failed' ? 'failed' : origin || str(u.state);
      return h('tr', { 'data-unit': str(u.segment), 'data-origin': origin, 'data-state': str(u.state) },
        td(h('i', { class: 'sw ' + cls }), 'swc'), td(str(u.segment), 'id'), td(str(u.state)), td(origin || '—'),
        td(str(u.worker) || '—'), tdn(num(u.compile_ms) > 0 ? fmtMs(u.compile_ms) : '—'), td(str(u.reason), 'small'));
    });
    const reasons = Object.entries(obj(b.here_reasons)).sort((a, b2) => num(b2[1]) - num(a[1]))
      .map(([k, n]) => h('tr', { 'data-reason': k }, td(k), tdn(fmtInt(n))));
    return [head,
      facts([['Started', fmtClock(b.started_ms)], ['Units', fmtInt(b.units)], ['On workers', fmtInt(b.on_workers)],
        ['From cache', fmtInt(b.from_cache)], ['Here', fmtInt(b.here)], ['Failed', fmtInt(b.failed)],
        ['Compiling', fmtInt(b.compiling)], ['Queued', fmtInt(b.queued)], ['Wall', fmtMs(b.wall_ms)]]),
      h('div', { class: 'bigbar' }, buildBar(b)), legend(),
      section('Workers', h('div', { id: 'lanes', class: 'lanes' }, boxes.length ? boxes : h('span', { class: 'muted' }, 'none'))),
      section('Units', pager(v.paging, r), table('units', ['', 'Unit', 'State', 'Origin', 'Worker', '>Compile', 'Reason'], unitRows)),
      section('Why units ran here', table('here-reasons', ['Reason', '>Units'], reasons)),
    ];
  }

  // ---- llm
  function budget(spent, limit) {
    if (!has(limit)) return [fmtUsd(spent), ' ', h('span', { class: 'muted' }, 'no budget')];
    const over = num(spent) > num(limit);
    const b = bar([[Math.min(num(spent), num(limit)), over ? 'failed' : 'worker', 'spent']], limit, over ? 'full' : '');
    return [b, ` ${fmtUsd(spent)} of ${fmtUsd(limit)}`];
  }
  function renderLlm(v) {
    const now = Date.now();
    const providers = arr(v.providers).map(obj).map((p) => h('tr', { 'data-provider': str(p.provider) },
      td(str(p.provider), 'id'), td(p.ready ? tag('ready', 'ok') : tag('not ready', 'bad')), tdn(fmtInt(p.in_flight)),
      td(budget(p.spent_today_usd, p.daily_budget_usd), 'budget'), td(budget(p.spent_month_usd, p.monthly_budget_usd), 'budget'),
      td(num(p.blocked_until_ms) > now ? 'for ' + fmtMs(num(p.blocked_until_ms) - now) : '—')));
    const usage = arr(v.rows).map(obj).map((u) => h('tr', { 'data-provider': str(u.provider), 'data-model': str(u.model) },
      td(str(u.provider)), td(str(u.model), 'id'), td(str(u.day)), tdn(fmtInt(u.requests)),
      tdn(fmtInt(u.errors), num(u.errors) > 0 ? 'bad' : null), tdn(fmtInt(u.input_tokens)), tdn(fmtInt(u.output_tokens)),
      tdn(fmtInt(u.cached_tokens)), tdn(u.unpriced ? [fmtUsd(u.cost_usd), ' ', tag('unpriced', 'warn')] : fmtUsd(u.cost_usd))));
    const rates = arr(v.rates).map(obj).map((x) => h('tr', { 'data-provider': str(x.provider), 'data-model': str(x.model) },
      td(str(x.provider)), td(str(x.model), 'id'), tdn(fmtRate(x.requests_per_s)), tdn(fmtRate(x.tokens_per_s))));
    const agents = arr(v.agents).map(obj).map((a) => h('tr', { 'data-agent': str(a.agent) },
      td(str(a.agent), 'id'), tdn(fmtInt(a.runs)), tdn(fmtInt(a.calls)), tdn(fmtInt(a.in_flight)), tdn(fmtMs(a.cpu_ms)),
      tdn(fmtMs(a.p50_ms)), tdn(fmtMs(a.p90_ms)), tdn(fmtMs(a.p99_ms)), tdn(fmtInt(a.input_tokens)), tdn(fmtInt(a.output_tokens)),
      tdn(fmtRate(a.tokens_in_per_s)), tdn(fmtRate(a.tokens_out_per_s)), tdn(has(a.cost_usd) ? fmtUsd(a.cost_usd) : '—')));
    return [
      section('Providers', table('providers', ['Provider', 'Status', '>In flight', 'Today', 'This month', 'Blocked'], providers)),
      section('Usage', table('usage', ['Provider', 'Model', 'Day', '>Requests', '>Errors', '>Input', '>Output', '>Cached', '>Cost'], usage)),
      section('Rates (last minute)', table('rates', ['Provider', 'Model', '>Requests/s', '>Tokens/s'], rates)),
      section('Agents', table('agents', ['Agent', '>Runs', '>Calls', '>In flight', '>CPU', '>p50', '>p90', '>p99',
        '>Tokens in', '>Tokens out', '>In/s', '>Out/s', '>Cost'], agents)),
    ];
  }

  const VIEWS = { swarm: renderSwarm, tasks: renderTasks, builds: renderBuilds, build: renderBuild, llm: renderLlm };

  // ---- connection badge and streams
  function badge(state) {
    conn.textContent = state;
    conn.className = 'badge' + (state ? ' ' + state : ' hidden');
  }
  function closeStream() {
    clearTimeout(retryTimer);
    if (es) es.close();
    es = null;
    badge('');
  }
  function openView(r) {
    let url = 'api/stream?view=' + r.name + '&page=' + r.page;
    if (r.name === 'build') url += '&id=' + encodeURIComponent(r.id);
    const src = new EventSource(url);
    es = src;
    src.addEventListener('open', () => { if (es === src) badge(''); });
    src.addEventListener('view', guard((ev) => {
      if (es !== src) return;
      badge('');
      const v = parse(ev.data);
      overview(v.overview);
      main.replaceChildren(...VIEWS[r.name](v, r));
    }));
    src.addEventListener('error', () => {
      if (es !== src) return;
      if (src.readyState !== EventSource.CLOSED) { badge('reconnecting'); return; }
      // Refused outright (not a dropped connection): try again in a while.
      badge('disconnected');
      retryTimer = setTimeout(guard(() => { if (es === src) openView(r); }), 5000);
    });
  }

  // ---- routing: #/swarm, #/tasks, #/task/<id>, #/builds, #/build/<id>, #/llm, with ?page=N
  function parseRoute() {
    const raw = location.hash.replace(/^#\/?/, '');
    const qi = raw.indexOf('?');
    const path = qi < 0 ? raw : raw.slice(0, qi);
    const q = new URLSearchParams(qi < 0 ? '' : raw.slice(qi + 1));
    const segs = path.split('/');
    let name = segs[0] || 'swarm';
    let id = segs.slice(1).join('/');
    try { id = decodeURIComponent(id); } catch (_) { /* keep it as written */ }
    if (!VIEWS[name] && name !== 'task') name = 'swarm';
    if (name === 'task' && !id) name = 'tasks';
    if (name === 'build' && !id) name = 'builds';
    if (name !== 'task' && name !== 'build') id = '';
    const page = Math.max(0, parseInt(q.get('page') || '0', 10) || 0);
    return { name, id, page, path: name + (id ? '/' + encodeURIComponent(id) : '') };
  }
  function onRoute() {
    const r = parseRoute();
    const key = r.name + '\n' + r.id + '\n' + r.page;
    if (key === routeKey) return;
    routeKey = key;
    closeStream();
    fault('');
    const navKey = r.name === 'task' ? 'tasks' : r.name === 'build' ? 'builds' : r.name;
    for (const a of document.querySelectorAll('#nav a[data-nav]')) a.classList.toggle('active', a.dataset.nav === navKey);
    main.replaceChildren(h('p', { class: 'muted', id: 'loading' }, 'loading…'));
    window.scrollTo(0, 0);
    if (r.name === 'task') openTask(r);
    else openView(r);
  }

  // Ticking: "running for" / "waiting" cells and the uptime, without refetching.
  setInterval(guard(() => {
    const now = Date.now();
    for (const el of document.querySelectorAll('[data-since]')) el.textContent = fmtMs(now - num(el.dataset.since));
    if (uptime) setText('uptime', fmtMs(uptime.ms + now - uptime.at));
  }), 1000);

  window.addEventListener('hashchange', guard(onRoute));
  window.addEventListener('pagehide', () => { if (es) es.close(); });
  window.addEventListener('pageshow', (e) => { if (e.persisted) { routeKey = ''; guard(onRoute)(); } });
  guard(onRoute)();
})();
