// The causality explorer.
//
// Follows every node's trace through the node that served this page (its
// proxy /ui/api/{node}/...: the browser may not reach the other nodes), lays
// the records out as a space-time diagram in SVG, and drives writes, reads
// and the fault hook. Plain ES module, no dependencies, no build step.
//
// Stable hooks for tests: each event is
//   <circle class="ev ev-KIND [pending|delivered] [sib]" data-node data-id data-kind
//           data-key data-dot="origin:seq" data-dots="...">,
// each message <line class="msg" data-from="node/id" data-to="node/id">, each
// stay in the buffer <line class="wait [pending]" data-node data-dot>, each link
// button #link-FROM-TO (data-paused), each answer <li class="result ok|err"
// data-op data-node data-key data-value>.

const API = new URL('api/', import.meta.url);
const $ = (selector) => document.querySelector(selector);

/** Geometry of the diagram, in pixels. */
const SLOT = 28; // between two columns
const LANE = 84; // between two nodes' lines
const TOP = 34; // above the first line
const LEFT = 22; // before the first column
const R = 6; // radius of a dot

/** Browsers open at most six connections per host: above this many nodes the
 * page polls the traces instead of holding one stream per node. */
const STREAM_LIMIT = 4;
/** Records kept in the page; the oldest are forgotten beyond. */
const MAX_EVENTS = 20000;
/** How often /status and the links are polled, in ms. */
const POLL_MS = 2000;

const state = {
  self: '',
  nodes: [],
  lane: {}, // node -> its index
  events: new Map(), // "node/id" -> record
  lanes: {}, // node -> records in id order
  last: {}, // node -> the last record id received
  notices: new Map(), // name -> text
  links: {}, // node -> {ok, paused: Set, reason}
  status: {}, // node -> the node's /status
  down: {}, // node -> why it does not answer, while it does not
  siblings: new Map(), // key -> Map(node -> count), keys with siblings now
  session: {}, // the merge of every clock received
  renderQueued: false,
};

// ---- small helpers -------------------------------------------------------------

const refOf = (node, id) => `${node}/${id}`;
const ref = (e) => refOf(e.node, e.id);
const dotText = (d) => (d ? `${d.origin}:${d.seq}` : '');
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function escapeAttr(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/** A clock with every node of the cluster, zeros included. */
function clockText(clock) {
  if (!clock) return '';
  const names = [...state.nodes, ...Object.keys(clock).filter((n) => !(n in state.lane))];
  return `{${names.map((n) => `${n}:${clock[n] || 0}`).join(', ')}}`;
}

function showValue(value) {
  return value === undefined ? '(none)' : JSON.stringify(value);
}

/** A transaction's writes, `a = 1, b deleted`. */
function writesText(writes) {
  return writes.map((w) => (w.op === 'delete' ? `${w.key} deleted` : `${w.key} = ${showValue(w.op.put)}`)).join(', ');
}

function parseValue(text) {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

function mergeSession(clock) {
  for (const [node, seq] of Object.entries(clock || {})) {
    state.session[node] = Math.max(state.session[node] || 0, seq);
  }
}

function el(tag, attrs = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === 'text') element.textContent = value;
    else if (name === 'class') element.className = value;
    else if (value !== undefined && value !== null && value !== false) element.setAttribute(name, value);
  }
  for (const child of children) element.append(child);
  return element;
}

function notice(name, text) {
  if (text) state.notices.set(name, text);
  else state.notices.delete(name);
  const box = $('#notices');
  box.replaceChildren(...[...state.notices].map(([n, t]) => el('div', { class: 'notice', 'data-notice': n, text: t })));
}

// ---- talking to the nodes through this node -----------------------------------------

function apiUrl(node, path, query) {
  const url = new URL(`${encodeURIComponent(node)}/${path}`, API);
  for (const [name, value] of Object.entries(query || {})) url.searchParams.set(name, value);
  return url;
}

function authHeaders(admin) {
  const token = (admin ? $('#cluster-secret') : $('#client-token')).value.trim();
  return token ? { Authorization: `Bearer ${token}` } : {};
}

/** One call to `node`; resolves to {status, body} (body parsed JSON or null),
 * rejects only when this node cannot be reached. */
async function call(node, method, path, { query, body, admin } = {}) {
  const headers = authHeaders(admin);
  const init = { method, headers };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const response = await fetch(apiUrl(node, path, query), init);
  const text = await response.text();
  let parsed = null;
  try {
    parsed = text ? JSON.parse(text) : null;
  } catch {
    parsed = text;
  }
  return { status: response.status, body: parsed };
}

/** Whether an answer says that its node cannot be reached: the proxy's 503
 * `unavailable` (refused, or no answer in time), or a node that is stopping. */
function unreachable(answer) {
  const error = answer.body && answer.body.error;
  return answer.status === 503 && Boolean(error) && error.code === 'unavailable';
}

/** Marks `node` down (`reason`: why) or up (null): a notice, and its lane. */
function setDown(node, reason) {
  if ((state.down[node] || null) === (reason || null)) return;
  if (reason) state.down[node] = reason;
  else delete state.down[node];
  notice(`down-${node}`, reason ? `${node} does not answer: ${reason}` : null);
  scheduleRender();
}

function errorText(answer) {
  const error = answer.body && answer.body.error;
  if (error && typeof error === 'object') return `${answer.status} ${error.code}: ${error.message}`;
  return `${answer.status} ${typeof answer.body === 'string' ? answer.body : JSON.stringify(answer.body)}`;
}

// ---- following the traces --------------------------------------------------------------

function addRecords(node, records) {
  let added = 0;
  for (const record of records) {
    if (record.id <= (state.last[node] || 0)) continue;
    state.last[node] = record.id;
    state.events.set(ref(record), record);
    (state.lanes[node] ||= []).push(record);
    trackSiblings(record);
    added += 1;
  }
  if (added) {
    forgetOldest();
    scheduleRender();
  }
}

/** Keys with siblings: a record that tells how many siblings its key has at
 * its node updates that node's entry. */
function trackSiblings(record) {
  if (!record.key) return;
  let count = record.siblings;
  if (count === undefined || count === null) {
    if (record.kind === 'siblings') count = 2;
    else if (record.kind === 'resolved') count = 1;
    else return;
  }
  const nodes = state.siblings.get(record.key) || new Map();
  if (count > 1) nodes.set(record.node, count);
  else nodes.delete(record.node);
  if (nodes.size) state.siblings.set(record.key, nodes);
  else state.siblings.delete(record.key);
}

function forgetOldest() {
  if (state.events.size <= MAX_EVENTS) return;
  const all = [...state.events.values()].sort((a, b) => a.time_us - b.time_us);
  for (const record of all.slice(0, state.events.size - MAX_EVENTS)) state.events.delete(ref(record));
  for (const node of Object.keys(state.lanes)) {
    state.lanes[node] = state.lanes[node].filter((r) => state.events.has(ref(r)));
  }
}

/** Before (re)connecting: catch up with GET v1/trace, and start the node's
 * lane afresh when it restarted (its ids began again from 1). */
async function catchUp(node) {
  const answer = await call(node, 'GET', 'v1/trace', { query: { after: state.last[node] || 0 } });
  if (answer.status !== 200) return answer;
  if (answer.body.last_id < (state.last[node] || 0)) {
    for (const record of state.lanes[node] || []) state.events.delete(ref(record));
    state.lanes[node] = [];
    state.last[node] = 0;
    scheduleRender();
    return catchUp(node);
  }
  addRecords(node, answer.body.events);
  if (!answer.body.enabled) return { status: 404, body: { error: { code: 'not_found', message: 'this node keeps no trace' } } };
  return answer;
}

function traceOffNotice(node, answer) {
  notice(`trace-${node}`, `${node} keeps no trace (${errorText(answer)}). Start the nodes with ` +
    'trace_buffer > 0 (KVNODE_TRACE_BUFFER=10000); cargo xtask cluster does.');
}

/** Follows `node`'s trace: server-sent events read with fetch (so that the
 * Authorization header can go along), parsed here. Reconnects forever. */
async function follow(node) {
  for (let attempt = 0; ; attempt += 1) {
    try {
      const answer = await catchUp(node);
      if (unreachable(answer)) throw new Error(errorText(answer));
      if (answer.status !== 200) {
        traceOffNotice(node, answer);
        setStream(node, 'no trace');
        await sleep(10000);
        continue;
      }
      const response = await fetch(apiUrl(node, 'v1/trace/stream', { after: state.last[node] || 0 }), {
        headers: { ...authHeaders(false), Accept: 'text/event-stream' },
      });
      if (response.status !== 200) {
        const refused = { status: response.status, body: await response.json().catch(() => null) };
        if (unreachable(refused)) throw new Error(errorText(refused));
        traceOffNotice(node, refused);
        setStream(node, 'no trace');
        await sleep(10000);
        continue;
      }
      notice(`trace-${node}`, null);
      setDown(node, null);
      setStream(node, 'live');
      attempt = 0;
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = '';
      let lagged = false;
      while (!lagged) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer = (buffer + value).replace(/\r\n/g, '\n');
        let end;
        while (!lagged && (end = buffer.indexOf('\n\n')) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          lagged = serverEvent(node, block);
        }
      }
      // After a lag, the next catch-up fetches what the stream skipped, if
      // the node still holds it.
      if (lagged) await reader.cancel();
      setStream(node, 'reconnecting');
    } catch (error) {
      setDown(node, error.message);
      setStream(node, 'down');
    }
    await sleep(Math.min(500 * 2 ** attempt, 5000));
  }
}

/** Handles one server-sent event; true when the stream fell behind. */
function serverEvent(node, block) {
  const data = [];
  for (const line of block.split('\n')) {
    if (line.startsWith(':')) {
      if (line.slice(1).trim().startsWith('this stream fell behind')) return true;
    } else if (line.startsWith('data:')) {
      data.push(line.slice(5).replace(/^ /, ''));
    }
  }
  if (data.length) addRecords(node, [JSON.parse(data.join('\n'))]);
  return false;
}

/** Follows `node`'s trace by polling, for clusters larger than STREAM_LIMIT. */
async function poll(node) {
  for (;;) {
    try {
      const answer = await catchUp(node);
      if (unreachable(answer)) throw new Error(errorText(answer));
      if (answer.status === 200) {
        notice(`trace-${node}`, null);
        setDown(node, null);
        setStream(node, 'polled');
      } else {
        traceOffNotice(node, answer);
        setStream(node, 'no trace');
      }
    } catch (error) {
      setDown(node, error.message);
      setStream(node, 'down');
    }
    await sleep(1000);
  }
}

const streams = {};
function setStream(node, text) {
  streams[node] = text;
  $('#streams').textContent = state.nodes.map((n) => `${n}: ${streams[n] || '…'}`).join(' · ');
}

// ---- the diagram ---------------------------------------------------------------------------

function earlier(a, b) {
  return a.time_us < b.time_us || (a.time_us === b.time_us && state.lane[a.node] < state.lane[b.node]);
}

/** Assigns each record a column: after the previous record of its node, after
 * the send it received, and never before the record placed just before it
 * (records are taken in time order, a receive waiting for its send). Records
 * of different nodes that follow each other share a column when they can. */
function layout() {
  const lanes = state.nodes.map((node) => state.lanes[node] || []);
  const next = lanes.map(() => 0);
  const lastSlot = lanes.map(() => -1);
  const slot = new Map();
  const order = [];
  const total = lanes.reduce((sum, lane) => sum + lane.length, 0);
  let floor = 0;
  while (order.length < total) {
    let best = -1;
    let fallback = -1;
    for (let i = 0; i < lanes.length; i += 1) {
      const head = lanes[i][next[i]];
      if (!head) continue;
      if (fallback < 0 || earlier(head, lanes[fallback][next[fallback]])) fallback = i;
      const cause = head.cause && refOf(head.cause.node, head.cause.id);
      if (cause && state.events.has(cause) && !slot.has(cause)) continue;
      if (best < 0 || earlier(head, lanes[best][next[best]])) best = i;
    }
    if (best < 0) best = fallback; // only if clocks disagree with causality
    const record = lanes[best][next[best]];
    next[best] += 1;
    let column = Math.max(floor, lastSlot[best] + 1);
    const cause = record.cause && slot.get(refOf(record.cause.node, record.cause.id));
    if (cause !== undefined) column = Math.max(column, cause + 1);
    slot.set(ref(record), column);
    lastSlot[best] = column;
    floor = column;
    order.push(record);
  }
  return { order, slot };
}

function scheduleRender() {
  if (state.renderQueued) return;
  state.renderQueued = true;
  requestAnimationFrame(() => {
    state.renderQueued = false;
    render();
  });
}

function render() {
  const { order, slot } = layout();
  const limit = Number($('#last-n').value);
  const shown = limit > 0 ? order.slice(-limit) : order;
  const visible = new Set(shown.map(ref));
  const first = shown.length ? slot.get(ref(shown[0])) : 0;
  const columns = shown.length ? slot.get(ref(shown[shown.length - 1])) - first + 1 : 0;
  const x = (record) => LEFT + (slot.get(ref(record)) - first) * SLOT;
  const y = (node) => TOP + state.lane[node] * LANE;
  const width = Math.max(LEFT * 2 + columns * SLOT + 40, $('#diagram-scroll').clientWidth);
  const height = TOP + Math.max(state.nodes.length - 1, 0) * LANE + 30;
  const right = width - 10;

  const parts = [
    '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto">' +
      '<path class="arrowhead" d="M0,0 L10,5 L0,10 z"/></marker></defs>',
  ];
  for (const node of state.nodes) {
    parts.push(`<line class="lane${state.down[node] ? ' down' : ''}" data-node="${escapeAttr(node)}" x1="4" y1="${y(node)}" x2="${right}" y2="${y(node)}"/>`);
  }

  // Time in the buffer: a band from `buffered` to the `deliver_from_buffer`
  // of the same write at the same node, or to the end while it waits.
  const fromBuffer = new Map(); // "node dot" -> its deliver_from_buffer records, in id order
  for (const lane of Object.values(state.lanes)) {
    for (const record of lane) {
      if (record.kind !== 'deliver_from_buffer') continue;
      const key = `${record.node} ${dotText(record.dot)}`;
      if (!fromBuffer.has(key)) fromBuffer.set(key, []);
      fromBuffer.get(key).push(record);
    }
  }
  const fate = new Map(); // buffered record ref -> its deliver_from_buffer record, or null
  for (const record of shown) {
    if (record.kind !== 'buffered') continue;
    const deliveries = fromBuffer.get(`${record.node} ${dotText(record.dot)}`) || [];
    fate.set(ref(record), deliveries.find((r) => r.id > record.id) || null);
  }
  for (const record of shown) {
    if (record.kind !== 'buffered') continue;
    const delivery = fate.get(ref(record));
    const end = delivery && visible.has(ref(delivery)) ? x(delivery) : right;
    const pending = delivery ? '' : ' pending';
    parts.push(`<line class="wait${pending}" data-node="${escapeAttr(record.node)}" data-dot="${escapeAttr(dotText(record.dot))}" ` +
      `x1="${x(record)}" y1="${y(record.node)}" x2="${end}" y2="${y(record.node)}"/>`);
  }

  // Messages: from a send to the receive that names it.
  for (const record of shown) {
    if (record.kind !== 'receive' || !record.cause) continue;
    const send = state.events.get(refOf(record.cause.node, record.cause.id));
    if (!send || !visible.has(ref(send)) || state.lane[send.node] === undefined) continue;
    const [x1, y1, x2, y2] = [x(send), y(send.node), x(record), y(record.node)];
    const length = Math.hypot(x2 - x1, y2 - y1) || 1;
    const shorten = (R + 2) / length;
    parts.push(`<line class="msg" data-ref="${escapeAttr(ref(record))}" data-from="${escapeAttr(ref(send))}" ` +
      `data-to="${escapeAttr(ref(record))}" x1="${x1 + (x2 - x1) * shorten}" y1="${y1 + (y2 - y1) * shorten}" ` +
      `x2="${x2 - (x2 - x1) * shorten}" y2="${y2 - (y2 - y1) * shorten}" marker-end="url(#arrow)"/>`);
  }

  // The events.
  for (const record of shown) {
    const classes = ['ev', `ev-${escapeAttr(record.kind)}`];
    if (record.kind === 'buffered') classes.push(fate.get(ref(record)) ? 'delivered' : 'pending');
    if (record.key !== undefined && state.siblings.has(record.key)) classes.push('sib');
    const txn = record.writes && record.writes.length > 1;
    if (txn) classes.push('txn');
    const attrs = [
      `class="${classes.join(' ')}"`,
      `data-ref="${escapeAttr(ref(record))}"`,
      `data-node="${escapeAttr(record.node)}"`,
      `data-id="${Number(record.id)}"`,
      `data-kind="${escapeAttr(record.kind)}"`,
      `cx="${x(record)}"`,
      `cy="${y(record.node)}"`,
      `r="${R}"`,
    ];
    if (record.key !== undefined) attrs.push(`data-key="${escapeAttr(record.key)}"`);
    if (txn) attrs.push(`data-keys="${escapeAttr(record.writes.map((w) => w.key).join(' '))}"`);
    if (record.dot) attrs.push(`data-dot="${escapeAttr(dotText(record.dot))}"`);
    if (record.dots && record.dots.length) attrs.push(`data-dots="${escapeAttr(record.dots.map(dotText).join(' '))}"`);
    parts.push(`<circle ${attrs.join(' ')}/>`);
  }

  const svg = $('#diagram');
  svg.setAttribute('width', width);
  svg.setAttribute('height', height);
  svg.setAttribute('viewBox', `0 0 ${width} ${height}`);
  svg.innerHTML = parts.join('');
  renderLanes(height);
  renderSiblings();
  $('#counts').textContent = `${state.events.size} events, ${shown.length} shown`;
  if ($('#follow').checked) {
    const scroll = $('#diagram-scroll');
    const end = scroll.scrollWidth - scroll.clientWidth;
    if (Math.abs(scroll.scrollLeft - end) > 1) {
      programmaticScroll = true;
      scroll.scrollLeft = end;
    }
  }
}

let programmaticScroll = false;

function renderLanes(height) {
  const box = $('#lane-labels');
  box.style.height = `${height}px`;
  box.replaceChildren(...state.nodes.map((node) => {
    const lane = state.lanes[node] || [];
    const latest = lane[lane.length - 1];
    const status = state.status[node];
    const links = state.links[node];
    const down = state.down[node];
    const label = el('div', { class: down ? 'lane-label down' : 'lane-label', id: `lane-${node}`, 'data-node': node });
    label.style.top = `${TOP + state.lane[node] * LANE - 26}px`;
    label.append(el('b', { text: node }));
    if (node === state.self) label.append(el('span', { class: 'self', text: ' (serves this page)' }));
    if (down) label.append(el('div', { class: 'down-mark', title: down, text: 'down: does not answer' }));
    const clock = latest ? latest.clock : status && status.applied;
    label.append(el('div', { class: 'clock', title: 'the clock of its latest event', text: clock ? clockText(clock).replaceAll(' ', '') : '' }));
    if (status && status.buffered_total > 0) {
      label.append(el('div', { class: 'buffered-count', text: `buffered: ${status.buffered_total}` }));
    }
    const recovery = status && status.recovery;
    if (recovery && recovery.phase && recovery.phase !== 'live') {
      const copied = recovery.phase === 'bootstrapping' ? `: ${recovery.keys_copied} keys copied` : '';
      label.append(el('div', { class: 'recovering', title: recovery.waiting_for || '', text: `${recovery.phase}${copied}` }));
    }
    if (links && links.paused.size) {
      label.append(el('div', { class: 'paused-links', text: `paused → ${[...links.paused].join(', ')}` }));
    }
    return label;
  }));
}

function renderSiblings() {
  const list = $('#sibling-keys');
  if (!state.siblings.size) {
    list.replaceChildren(el('li', { class: 'none', text: 'none' }));
    return;
  }
  list.replaceChildren(...[...state.siblings].sort(([a], [b]) => (a < b ? -1 : 1)).map(([key, nodes]) =>
    el('li', { 'data-key': key }, el('code', { text: key }),
      ` ${[...nodes].map(([node, count]) => `${count} at ${node}`).join(', ')}`)));
}

// ---- details on hover ------------------------------------------------------------------------

function describe(record) {
  const lines = [[`${record.kind}`, `${record.node} #${record.id}`]];
  lines.push(['time (UTC)', new Date(record.time_us / 1000).toISOString().replace('T', ' ').replace('Z', '')]);
  const txn = record.writes && record.writes.length > 1;
  if (txn) lines.push([`transaction of ${record.writes.length} keys`, writesText(record.writes)]);
  else if (record.key !== undefined) lines.push(['key', record.key]);
  if (record.dot) lines.push(['write', dotText(record.dot)]);
  if (!txn && (record.kind === 'write' || record.kind === 'read')) lines.push(['value', showValue(record.value)]);
  if (record.peer) lines.push([record.kind === 'send' ? 'to' : 'from', record.peer]);
  if (record.dots && record.dots.length) lines.push(['writes', record.dots.map(dotText).join(', ')]);
  if (record.cause) lines.push(['sent as', `${record.cause.node} #${record.cause.id}`]);
  if (record.missing && record.missing.length) {
    lines.push(['waits for', record.missing.map((m) => `${m.node}: has ${m.have}, needs ${m.want}`).join('; ')]);
  }
  if (record.siblings !== undefined) lines.push(['siblings', String(record.siblings)]);
  if (record.kind === 'buffered') {
    const lane = state.lanes[record.node] || [];
    const delivery = lane.find((r) => r.kind === 'deliver_from_buffer' && r.id > record.id && dotText(r.dot) === dotText(record.dot));
    lines.push(['then', delivery ? `delivered from the buffer (#${delivery.id})` : 'still waiting']);
  }
  lines.push(['clock', clockText(record.clock)]);
  return lines;
}

function showDetails(lines, event) {
  const table = el('table', {}, ...lines.map(([name, value]) => el('tr', {}, el('th', { text: name }), el('td', { text: value }))));
  $('#details').replaceChildren(table);
  const tooltip = $('#tooltip');
  tooltip.replaceChildren(table.cloneNode(true));
  tooltip.hidden = false;
  const left = Math.min(event.clientX + 14, window.innerWidth - tooltip.offsetWidth - 8);
  const top = event.clientY + 14 + tooltip.offsetHeight > window.innerHeight ? event.clientY - tooltip.offsetHeight - 10 : event.clientY + 14;
  tooltip.style.left = `${Math.max(left, 4) + window.scrollX}px`;
  tooltip.style.top = `${Math.max(top, 4) + window.scrollY}px`;
}

function onHover(event) {
  const target = event.target.closest('.ev, .msg');
  if (!target) {
    $('#tooltip').hidden = true;
    return;
  }
  if (target.classList.contains('msg')) {
    const send = state.events.get(target.dataset.from);
    const receive = state.events.get(target.dataset.to);
    if (!send || !receive) return;
    showDetails([
      ['message', `${send.node} → ${receive.node}`],
      ['writes', (receive.dots || send.dots || []).map(dotText).join(', ')],
      ['sent', `${send.node} #${send.id} at ${clockText(send.clock)}`],
      ['received', `${receive.node} #${receive.id} at ${clockText(receive.clock)}`],
    ], event);
    return;
  }
  const record = state.events.get(target.dataset.ref);
  if (record) showDetails(describe(record), event);
}

// ---- controls ---------------------------------------------------------------------------------

function result(ok, text, data = {}) {
  const item = el('li', { class: `result ${ok ? 'ok' : 'err'}`, text });
  for (const [name, value] of Object.entries(data)) item.dataset[name] = value;
  const list = $('#results');
  list.prepend(item);
  while (list.children.length > 50) list.lastElementChild.remove();
}

function sessionContext() {
  return $('#session').checked && Object.keys(state.session).length ? { ...state.session } : undefined;
}

async function doWrite(node, key, value, context = sessionContext()) {
  const body = { key, value };
  if (context) body.context = context;
  const answer = await call(node, 'POST', 'write', { body });
  if (answer.status !== 200) {
    result(false, `${node}: write ${key} failed: ${errorText(answer)}`, { op: 'write', node, key });
    throw new Error(errorText(answer));
  }
  mergeSession(answer.body.timestamp);
  result(true, `${node}: wrote ${key} = ${showValue(value)}, clock ${clockText(answer.body.timestamp)}`,
    { op: 'write', node, key, value: JSON.stringify(value) });
  return answer.body.timestamp;
}

function kvPath(key) {
  return `v1/kv/${key.split('/').map(encodeURIComponent).join('/')}`;
}

async function doRead(node, key, context = sessionContext()) {
  const query = context ? { context: JSON.stringify(context) } : undefined;
  const answer = await call(node, 'GET', kvPath(key), { query });
  if (answer.status !== 200) {
    result(false, `${node}: read ${key} failed: ${errorText(answer)}`, { op: 'read', node, key });
    throw new Error(errorText(answer));
  }
  const read = answer.body;
  mergeSession(read.context);
  const live = (read.siblings || []).filter((s) => !s.deleted);
  let text = read.found ? `${node}: ${key} = ${showValue(read.value)}` : `${node}: ${key} is not set`;
  if (live.length > 1) text += ` (${live.length} siblings: ${live.map((s) => `${showValue(s.value)} from ${dotText(s.dot)}`).join(', ')})`;
  result(true, `${text}, clock ${clockText(read.context)}`,
    { op: 'read', node, key, value: read.found ? JSON.stringify(read.value) : 'null' });
  return read;
}

/** Links with a pause or resume under way: their button stays disabled. */
const pendingLinks = new Set();

async function setLink(from, to, pause) {
  const action = pause ? 'pause' : 'resume';
  pendingLinks.add(`${from} ${to}`);
  renderLinks();
  let answer;
  try {
    answer = await call(from, 'POST', `admin/v1/links/${encodeURIComponent(to)}/${action}`, { admin: true, body: {} });
  } finally {
    pendingLinks.delete(`${from} ${to}`);
    renderLinks();
  }
  if (answer.status !== 200) {
    result(false, `${from} → ${to}: ${action} failed: ${errorText(answer)}`, { op: 'link', node: from });
    throw new Error(errorText(answer));
  }
  linkEpoch[from] = (linkEpoch[from] || 0) + 1;
  state.links[from] = { ok: true, paused: new Set(answer.body.paused), reason: '' };
  result(true, `replication ${from} → ${to} ${pause ? 'paused' : 'resumed'}`, { op: 'link', node: from, to, action });
  renderLinks();
  scheduleRender();
}

/** Bumped by each pause or resume, so that a poll sent before it does not
 * show the old state afterwards. */
const linkEpoch = {};

async function refreshLinks(node) {
  const epoch = linkEpoch[node] || 0;
  try {
    const answer = await call(node, 'GET', 'admin/v1/links', { admin: true });
    if ((linkEpoch[node] || 0) !== epoch) return;
    if (answer.status === 200) {
      state.links[node] = { ok: true, paused: new Set(answer.body.paused), reason: '' };
    } else if (answer.status === 401) {
      state.links[node] = { ok: false, paused: new Set(), reason: `${node} wants the cluster secret (Access tokens, below)` };
    } else if (answer.status === 404) {
      state.links[node] = { ok: false, paused: new Set(), reason: `${node}'s fault hook is off (faults = true, KVNODE_FAULTS=true, turns it on; cargo xtask cluster does)` };
    } else {
      state.links[node] = { ok: false, paused: new Set(), reason: `${node}: ${errorText(answer)}` };
    }
  } catch (error) {
    state.links[node] = { ok: false, paused: new Set(), reason: `${node} cannot be reached: ${error.message}` };
  }
}

/** Builds the table of link buttons, once: later updates change the buttons
 * in place, so that a click is never lost to a re-render. */
function buildLinks() {
  const head = el('tr', {}, el('th', { text: 'from \\ to' }), ...state.nodes.map((n) => el('th', { text: n })));
  const rows = state.nodes.map((from) => el('tr', {}, el('th', { text: from }), ...state.nodes.map((to) => {
    if (to === from) return el('td', { class: 'self', text: '—' });
    return el('td', {}, el('button', {
      type: 'button',
      id: `link-${from}-${to}`,
      class: 'link',
      'data-from': from,
      'data-to': to,
      disabled: true,
      text: 'pause',
    }));
  })));
  $('#links').replaceChildren(el('thead', {}, head), el('tbody', {}, ...rows));
}

function renderLinks() {
  for (const button of document.querySelectorAll('#links button.link')) {
    const { from, to } = button.dataset;
    const links = state.links[from];
    const paused = Boolean(links && links.paused.has(to));
    button.dataset.paused = String(paused);
    button.setAttribute('aria-pressed', String(paused));
    button.title = `replication ${from} → ${to} is ${paused ? 'paused: click to resume' : 'flowing: click to pause'}`;
    button.textContent = paused ? 'resume' : 'pause';
    button.disabled = !(links && links.ok) || pendingLinks.has(`${from} ${to}`);
    button.parentElement.className = paused ? 'paused' : '';
  }
  const reasons = state.nodes.map((n) => state.links[n]).filter((l) => l && !l.ok).map((l) => l.reason);
  $('#links-reason').textContent = reasons.join('. ');
  const first = state.links[state.nodes[0]];
  $('#run-scenario2').disabled = state.nodes.length < 3 || scenarioRunning || !(first && first.ok);
}

async function pollStatus() {
  for (;;) {
    await Promise.all(state.nodes.map(async (node) => {
      try {
        const answer = await call(node, 'GET', 'status');
        if (answer.status === 200) {
          state.status[node] = answer.body;
          setDown(node, null);
        } else if (unreachable(answer)) {
          delete state.status[node];
          setDown(node, errorText(answer));
        }
      } catch (error) {
        delete state.status[node];
        setDown(node, error.message);
      }
      await refreshLinks(node);
    }));
    renderLinks();
    scheduleRender();
    await sleep(POLL_MS);
  }
}

function clearView() {
  state.events.clear();
  state.lanes = {};
  $('#details').textContent = 'Cleared. New events appear as they happen.';
  scheduleRender();
}

// ---- scenario 2 --------------------------------------------------------------------------------

let scenarioRunning = false;

function step(name, status) {
  for (const item of document.querySelectorAll('#scenario2-steps li')) {
    if (item.dataset.step === name) item.className = status;
  }
}

/** Waits until `condition()` holds, re-checking after each render, or fails
 * after `ms` naming `what`. */
async function until(condition, what, ms = 15000) {
  const deadline = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

function recordAt(node, kind, dot) {
  return (state.lanes[node] || []).find((r) => r.kind === kind && dotText(r.dot) === dot);
}

async function runScenario2() {
  const [n1, n2, n3] = state.nodes;
  const status = $('#scenario2-status');
  scenarioRunning = true;
  renderLinks();
  for (const item of document.querySelectorAll('#scenario2-steps li')) item.className = '';
  let current = 'pause';
  const begin = (name) => {
    current = name;
    step(name, 'active');
  };
  try {
    begin('pause');
    await setLink(n1, n3, true);
    step('pause', 'done');
    begin('write1');
    const first = await doWrite(n1, 'x', 100, undefined);
    step('write1', 'done');
    begin('read2');
    // The read waits at node2 until node2 has node1's write (the context).
    const read = await doRead(n2, 'x', first);
    step('read2', 'done');
    begin('write2');
    const second = await doWrite(n2, 'x', 200, read.context);
    const dot = `${n2}:${second[n2]}`;
    step('write2', 'done');
    begin('buffered');
    await until(() => recordAt(n3, 'buffered', dot) || (state.status[n3] &&
      state.status[n3].buffered_events.some((b) => dotText(b.dot) === dot)), `${n3} to buffer ${dot}`);
    step('buffered', 'done');
    begin('resume');
    await setLink(n1, n3, false);
    step('resume', 'done');
    begin('delivered');
    const read3 = await doRead(n3, 'x', second);
    // Without a trace at node3 the read above is the proof.
    await until(() => recordAt(n3, 'deliver_from_buffer', dot) || streams[n3] === 'no trace',
      `${n3} to deliver ${dot} from the buffer`);
    step('delivered', 'done');
    begin('read3');
    step('read3', read3.value === 200 ? 'done' : 'failed');
    status.textContent = `Done: ${n3} buffered ${dot} until ${n1}'s write arrived.`;
  } catch (error) {
    step(current, 'failed');
    status.textContent = `Stopped: ${error.message}`;
  } finally {
    scenarioRunning = false;
    renderLinks();
  }
}

// ---- start -------------------------------------------------------------------------------------

async function start() {
  let cluster;
  for (;;) {
    try {
      const response = await fetch(new URL('cluster', API));
      cluster = await response.json();
      break;
    } catch (error) {
      $('#served-by').textContent = `cannot reach the node: ${error.message}; retrying`;
      await sleep(2000);
    }
  }
  state.self = cluster.node;
  state.nodes = cluster.nodes;
  state.nodes.forEach((node, i) => {
    state.lane[node] = i;
  });
  $('#served-by').textContent = `served by ${cluster.node}, cluster of ${cluster.nodes.length}: ${cluster.nodes.join(', ')}`;
  document.title = `Causality explorer · ${cluster.node}`;
  for (const select of document.querySelectorAll('.node-select')) {
    select.replaceChildren(...state.nodes.map((n) => el('option', { value: n, text: n })));
  }
  $('#read-node').value = state.nodes[Math.min(1, state.nodes.length - 1)];
  ['.n1', '.n2', '.n3'].forEach((cls, i) => {
    for (const name of document.querySelectorAll(cls)) name.textContent = state.nodes[i] || `node${i + 1}`;
  });

  $('#write-form').addEventListener('submit', (event) => {
    event.preventDefault();
    doWrite($('#write-node').value, $('#write-key').value, parseValue($('#write-value').value)).catch(() => {});
  });
  $('#read-form').addEventListener('submit', (event) => {
    event.preventDefault();
    doRead($('#read-node').value, $('#read-key').value).catch(() => {});
  });
  $('#links').addEventListener('click', (event) => {
    const button = event.target.closest('button.link');
    if (!button || button.disabled) return;
    setLink(button.dataset.from, button.dataset.to, button.dataset.paused !== 'true').catch(() => {});
  });
  $('#clear-view').addEventListener('click', clearView);
  $('#last-n').addEventListener('change', scheduleRender);
  $('#follow').addEventListener('change', scheduleRender);
  $('#run-scenario2').addEventListener('click', () => runScenario2());
  $('#diagram').addEventListener('mouseover', onHover);
  $('#diagram').addEventListener('mouseleave', () => {
    $('#tooltip').hidden = true;
  });
  $('#diagram-scroll').addEventListener('scroll', (event) => {
    if (programmaticScroll) {
      programmaticScroll = false;
      return;
    }
    const box = event.currentTarget;
    $('#follow').checked = box.scrollLeft + box.clientWidth >= box.scrollWidth - 4;
  });
  for (const id of ['client-token', 'cluster-secret']) {
    const input = document.getElementById(id);
    input.value = sessionStorage.getItem(`kvnode-${id}`) || '';
    input.addEventListener('change', () => sessionStorage.setItem(`kvnode-${id}`, input.value));
  }
  window.addEventListener('resize', scheduleRender);

  buildLinks();
  renderLinks();
  scheduleRender();
  const followTrace = state.nodes.length <= STREAM_LIMIT ? follow : poll;
  for (const node of state.nodes) followTrace(node);
  pollStatus();
  document.body.dataset.ready = 'true';
}

start();
