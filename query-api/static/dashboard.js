'use strict';
const KEY_STORAGE = 'energy.apiKey';
const MAX_FLEET_PAGES = 20;
const AUTO_REFRESH_MS = 60000;
const SVG_NS = 'http://www.w3.org/2000/svg';
const $ = (id) => document.getElementById(id);

const state = { selectedId: null, thresholds: null, pending: 0, lastError: null, vehicleToken: 0, fleetToken: 0 };

// ---- API key: sessionStorage, with an in-memory fallback when storage is blocked ----
let memoryKey = null;
function getKey() {
  try { return sessionStorage.getItem(KEY_STORAGE); } catch { return memoryKey; }
}
function setKey(key) {
  memoryKey = key || null;
  try { key ? sessionStorage.setItem(KEY_STORAGE, key) : sessionStorage.removeItem(KEY_STORAGE); } catch { /* memory only */ }
  $('api-key-status').textContent = key ? 'Using a key' : 'No key';
}
function replaceUrl(mutate) {
  const url = new URL(location.href);
  mutate(url.searchParams);
  try { history.replaceState(history.state, '', url); } catch { /* e.g. opaque origins */ }
}

// ---- Fetching: every error becomes an Error with the message the page shows ----
async function apiGet(path) {
  const headers = { Accept: 'application/json' };
  const key = getKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  let res;
  try {
    res = await fetch(path, { headers, cache: 'no-store' });
  } catch (e) {
    throw new Error(`Network error: ${e.message}`);
  }
  if (res.ok) return res.json();
  if (res.status === 401) throw new Error('API key required or not accepted');
  if (res.status === 403) throw new Error('This API key lacks the read role');
  let message = `Request failed with HTTP ${res.status}`;
  try {
    const body = await res.json();
    if (body && typeof body.error === 'string') message = body.error;
  } catch { /* not JSON: keep the status message */ }
  throw new Error(message);
}

// Paths are relative (no leading slash) so the page also works behind a path prefix.
async function loadFleet() {
  const first = await apiGet('v1/analytics/fleet?limit=1000');
  const vehicles = [...(first.vehicles || [])];
  let cursor = first.nextCursor;
  for (let page = 1; cursor && page < MAX_FLEET_PAGES; page++) {
    const next = await apiGet(`v1/analytics/fleet?limit=1000&cursor=${encodeURIComponent(cursor)}`);
    vehicles.push(...(next.vehicles || []));
    cursor = next.nextCursor;
  }
  return { ...first, vehicles };
}

// ---- Formatting ----
const isNum = (v) => v !== null && v !== undefined && v !== '' && Number.isFinite(Number(v));
const fixed = (v, digits) => (isNum(v) ? Number(v).toFixed(digits) : '—');
const percent = (v) => (isNum(v) ? `${Number(v).toFixed(2)} %` : '—');
const orZero = (v) => (isNum(v) ? Number(v) : 0);
function utc(iso) {
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso ?? '—') : `${d.toISOString().slice(0, 16).replace('T', ' ')} UTC`;
}

// ---- Loading state: body[data-state] is loading until every pending task settles ----
async function track(task) {
  if (state.pending++ === 0) { state.lastError = null; $('error').textContent = ''; }
  document.body.dataset.state = 'loading';
  try {
    await task();
  } catch (e) {
    state.lastError = e;
  } finally {
    if (--state.pending === 0) {
      const err = state.lastError;
      $('error').textContent = err ? (err.message || String(err)) : '';
      document.body.dataset.state = err ? 'error' : 'ready';
      if (!err) $('updated').textContent = `Updated ${new Date().toLocaleTimeString()}`;
    }
  }
}

function refreshAll() {
  return track(async () => {
    const token = ++state.fleetToken;
    const fleet = await loadFleet();
    if (token !== state.fleetToken) return; // a newer refresh superseded this one
    renderFleet(fleet);
    // Keep the current choice across refreshes; else ?vehicle=; else the worst vehicle.
    const wanted = state.selectedId ?? (new URLSearchParams(location.search).get('vehicle') || fleet.vehicles[0]?.vehicleId);
    if (wanted === undefined || wanted === null) return showNoVehicle();
    await showVehicle(wanted);
  });
}

function selectVehicle(id) {
  return track(() => showVehicle(id));
}

// ---- Fleet table ----
function renderFleet(fleet) {
  state.thresholds = fleet.thresholds || null;
  renderThresholdText();
  $('fleet-total').textContent = String(Math.trunc(orZero(fleet.total ?? fleet.vehicles.length)));
  $('fleet-window').textContent = `${utc(fleet.from)} – ${utc(fleet.to)}`;
  const rows = fleet.vehicles.map((v, i) => fleetRow(v, i + 1));
  if (rows.length === 0) {
    const tr = document.createElement('tr');
    tr.className = 'empty';
    const td = cell(tr, 'empty', 'No vehicle has readings in this window.');
    td.colSpan = 7;
    rows.push(tr);
  }
  $('fleet').tBodies[0].replaceChildren(...rows);
  markSelectedRow();
}

function cell(tr, className, text) {
  const td = document.createElement('td');
  td.className = className;
  td.textContent = text;
  tr.appendChild(td);
  return td;
}

function fleetRow(v, rank) {
  const tr = document.createElement('tr');
  const status = String(v.status ?? 'UNKNOWN');
  tr.className = 'vehicle';
  tr.setAttribute('data-vehicle-id', String(v.vehicleId));
  tr.setAttribute('data-status', status);
  tr.tabIndex = 0;
  cell(tr, 'rank', String(rank));
  cell(tr, 'vehicle-id', String(v.vehicleId));
  cell(tr, 'efficiency', percent(v.efficiency));
  const badge = document.createElement('span');
  // Only known words become classes; anything else is styled as unknown (text still shown).
  badge.className = `badge ${/^(HEALTHY|WARNING|CRITICAL|UNKNOWN)$/.test(status) ? status.toLowerCase() : 'unknown'}`;
  badge.textContent = status;
  cell(tr, 'status', '').appendChild(badge);
  cell(tr, 'sum-dc', fixed(v.sumDC, 3));
  cell(tr, 'sum-ac', fixed(v.sumAC, 3));
  cell(tr, 'battery-temp', fixed(v.avgBatteryTemp, 1));
  const choose = () => selectVehicle(String(v.vehicleId));
  tr.addEventListener('click', choose);
  tr.addEventListener('keydown', (e) => { if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); choose(); } });
  return tr;
}

function markSelectedRow() {
  // Compare attributes rather than build a selector: ids may contain any character.
  for (const tr of $('fleet').querySelectorAll('tr.vehicle')) {
    const selected = tr.getAttribute('data-vehicle-id') === state.selectedId;
    tr.classList.toggle('selected', selected);
    tr.setAttribute('aria-selected', String(selected));
  }
}

function renderThresholdText() {
  const t = state.thresholds;
  if (!t) return;
  const h = Number(t.healthy), w = Number(t.warning);
  $('threshold-text').textContent = `Below ${h} % suggests a fault or energy leakage: ` +
    `HEALTHY ≥ ${h} %, WARNING ≥ ${w} %, CRITICAL < ${w} %, UNKNOWN when no AC was drawn.`;
}

// ---- Selected vehicle ----
async function showVehicle(id) {
  const token = ++state.vehicleToken;
  state.selectedId = id;
  replaceUrl((p) => p.set('vehicle', id));
  markSelectedRow();
  $('vehicle-title').textContent = id;
  const base = `v1/analytics/performance/${encodeURIComponent(id)}`;
  const [summary, series] = await Promise.allSettled([apiGet(base), apiGet(`${base}/series?bucket=1h`)]);
  if (token !== state.vehicleToken) return; // the user picked another vehicle meanwhile
  renderSummary(summary.status === 'fulfilled' ? summary.value : null);
  const s = series.status === 'fulfilled' ? series.value : null;
  renderSeries(s ? s.points || [] : [], s?.from, s?.to);
  const failed = [summary, series].find((r) => r.status === 'rejected');
  if (failed) throw failed.reason;
}

function showNoVehicle() {
  state.selectedId = null;
  $('vehicle-title').textContent = 'No vehicle selected';
  renderSummary(null);
  renderSeries([], null, null);
}

function renderSummary(s) {
  $('summary-efficiency').textContent = percent(s?.efficiency);
  $('summary-sum-dc').textContent = fixed(s?.sumDC, 3);
  $('summary-sum-ac').textContent = fixed(s?.sumAC, 3);
  $('summary-battery-temp').textContent = fixed(s?.avgBatteryTemp, 1);
  const meters = Array.isArray(s?.meterIds) ? s.meterIds.map(String) : [];
  $('summary-meters').textContent = meters.length ? meters.join(', ') : '—';
}

function renderSeries(points, from, to) {
  drawChart(points, from, to);
  const rows = points.map((p) => {
    const tr = document.createElement('tr');
    tr.className = 'point';
    cell(tr, 'start', String(p.start ?? ''));
    cell(tr, 'sum-dc', fixed(p.sumDC, 3));
    cell(tr, 'sum-ac', fixed(p.sumAC, 3));
    cell(tr, 'efficiency', percent(p.efficiency));
    return tr;
  });
  $('series-table').tBodies[0].replaceChildren(...rows);
}

// ---- Chart: energy (left axis) and efficiency (right axis, 0–120 %) over time ----
const PLOT = { left: 60, right: 740, top: 40, bottom: 260 };
const EFF_MAX = 120;
const round1 = (n) => Math.round(n * 10) / 10;

function svgEl(name, attrs, text) {
  const el = document.createElementNS(SVG_NS, name);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  return el;
}

// A "nice" axis top and step (1, 2, 2.5 or 5 × 10^n) for about four gridlines.
function niceScale(max) {
  const raw = (max > 0 ? max : 1) / 4;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].find((m) => m * mag >= raw) * mag;
  return { step, top: Math.ceil((max > 0 ? max : 1) / step) * step };
}

// Place each bucket at its midpoint in time; fall back to even spacing if times are unusable.
function xScale(points, from, to) {
  const width = PLOT.right - PLOT.left;
  const t0 = Date.parse(from), t1 = Date.parse(to);
  const mids = points.map((p) => (Date.parse(p.start) + Date.parse(p.end)) / 2);
  if (Number.isFinite(t0) && Number.isFinite(t1) && t1 > t0 && mids.every(Number.isFinite)) {
    return { xs: mids.map((m) => PLOT.left + ((m - t0) / (t1 - t0)) * width), t0, t1 };
  }
  return { xs: points.map((_, i) => PLOT.left + ((i + 0.5) / points.length) * width), t0: null, t1: null };
}

function drawChart(points, from, to) {
  const { left: L, right: R, top: T, bottom: B } = PLOT;
  const els = [];
  const { xs, t0, t1 } = xScale(points, from, to);
  const energyMax = Math.max(0, ...points.flatMap((p) => [orZero(p.sumDC), orZero(p.sumAC)]));
  const { step, top } = niceScale(energyMax);
  const yEnergy = (v) => B - (v / top) * (B - T);
  const yEff = (v) => B - (Math.min(Math.max(v, 0), EFF_MAX) / EFF_MAX) * (B - T);

  for (let i = 0; i <= Math.round(top / step); i++) {
    const v = i * step, y = round1(yEnergy(v));
    els.push(svgEl('line', { class: 'grid', x1: L, x2: R, y1: y, y2: y }));
    els.push(svgEl('text', { class: 'tick', x: L - 6, y: y + 4, 'text-anchor': 'end' }, String(Number(v.toFixed(3)))));
  }
  for (let v = 0; v <= EFF_MAX; v += 30) {
    els.push(svgEl('text', { class: 'tick', x: R + 6, y: round1(yEff(v)) + 4 }, `${v}`));
  }
  if (t0 !== null) {
    // Label whole UTC hours, about six labels whatever the window length.
    const stepMs = Math.max(1, Math.ceil((t1 - t0) / 3.6e6 / 6)) * 3.6e6;
    for (let t = Math.ceil(t0 / stepMs) * stepMs; t <= t1; t += stepMs) {
      const x = round1(L + ((t - t0) / (t1 - t0)) * (R - L));
      els.push(svgEl('line', { class: 'axis', x1: x, x2: x, y1: B, y2: B + 5 }));
      els.push(svgEl('text', { class: 'tick', x, y: B + 18, 'text-anchor': 'middle' }, new Date(t).toISOString().slice(11, 16)));
    }
  }
  els.push(svgEl('line', { class: 'axis', x1: L, x2: L, y1: T, y2: B }));
  els.push(svgEl('line', { class: 'axis', x1: R, x2: R, y1: T, y2: B }));
  els.push(svgEl('line', { class: 'axis', x1: L, x2: R, y1: B, y2: B }));
  els.push(svgEl('text', { class: 'label', x: 14, y: (T + B) / 2, 'text-anchor': 'middle', transform: `rotate(-90 14 ${(T + B) / 2})` }, 'Energy (kWh)'));
  els.push(svgEl('text', { class: 'label', x: 786, y: (T + B) / 2, 'text-anchor': 'middle', transform: `rotate(90 786 ${(T + B) / 2})` }, 'Efficiency (%)'));
  els.push(svgEl('text', { class: 'label', x: (L + R) / 2, y: 292, 'text-anchor': 'middle' }, 'Time (UTC)'));

  if (state.thresholds && isNum(state.thresholds.healthy)) {
    const y = round1(yEff(Number(state.thresholds.healthy)));
    els.push(svgEl('line', { class: 'threshold', x1: L, x2: R, y1: y, y2: y }));
    els.push(svgEl('text', { class: 'tick', x: R - 4, y: y - 4, 'text-anchor': 'end' }, `healthy ≥ ${Number(state.thresholds.healthy)} %`));
  }

  const pair = (i, y) => `${round1(xs[i])},${round1(y)}`;
  const effIdx = points.map((p, i) => (isNum(p.efficiency) ? i : -1)).filter((i) => i >= 0);
  const series = [
    ['dc', points.map((p, i) => pair(i, yEnergy(orZero(p.sumDC))))],
    ['ac', points.map((p, i) => pair(i, yEnergy(orZero(p.sumAC))))],
    ['efficiency', effIdx.map((i) => pair(i, yEff(Number(points[i].efficiency))))],
  ];
  for (const [name, pairs] of series) {
    els.push(svgEl('polyline', { 'data-series': name, 'data-points': points.length, points: pairs.join(' ') }));
  }
  // Markers keep isolated efficiency points (between empty buckets) visible.
  for (const i of effIdx) {
    els.push(svgEl('circle', { class: 'marker', cx: round1(xs[i]), cy: round1(yEff(Number(points[i].efficiency))), r: 2.5 }));
  }
  if (points.length === 0) {
    els.push(svgEl('text', { class: 'label', x: (L + R) / 2, y: (T + B) / 2, 'text-anchor': 'middle' }, 'No data'));
  }

  const legend = [['dc', 'DC stored (kWh)'], ['ac', 'AC drawn (kWh)'], ['efficiency', 'Efficiency (%)'], ['threshold', 'Healthy threshold']];
  legend.forEach(([name, label], i) => {
    const x = L + i * 165;
    // Samples are <line>s (not polylines, not .threshold) so the chart holds exactly three polylines and one threshold.
    // Styled by class from dashboard.css: the page's CSP allows no inline styles.
    const sample = svgEl('line', { class: `legend-line legend-${name}`, x1: x, x2: x + 22, y1: 16, y2: 16 });
    els.push(sample, svgEl('text', { class: 'legend', x: x + 28, y: 20 }, label));
  });

  $('chart').replaceChildren(...els);
}

// ---- Start-up ----
function init() {
  // A key may come in the fragment (#key=…): browsers never send fragments,
  // so it reaches no server or proxy log. It is removed from the address at once.
  const fragment = new URLSearchParams(location.hash.slice(1));
  if (fragment.has('key')) {
    setKey(fragment.get('key'));
    try { history.replaceState(history.state, '', location.pathname + location.search); } catch { /* opaque origin */ }
  } else {
    setKey(getKey());
  }
  $('api-key-form').addEventListener('submit', (e) => {
    e.preventDefault();
    setKey($('api-key').value.trim());
    $('api-key').value = '';
    refreshAll();
  });
  $('refresh').addEventListener('click', () => refreshAll());
  setInterval(() => { if (state.pending === 0 && !document.hidden) refreshAll(); }, AUTO_REFRESH_MS);
  drawChart([], null, null);
  refreshAll();
}

init();
