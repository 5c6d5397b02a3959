// The review page: sign in with an API token, list and filter alerts, look at the parcel on the
// area's own imagery (before/after swipe), and acknowledge, confirm or dismiss.
// Plain JavaScript on purpose: no build step; Leaflet is the only library.
(() => {
  'use strict';

  const TOKEN_KEY = 'monitor.token';
  const STATUSES = ['new', 'acknowledged', 'confirmed', 'dismissed', 'resolved'];
  const OPEN = ['new', 'acknowledged', 'confirmed'];
  const CONFIDENCES = ['probable', 'confirmed'];
  // The statuses each review action may start from (as the server enforces them).
  const ALLOWED_FROM = {
    ack: ['new', 'acknowledged'],
    confirm: ['new', 'acknowledged', 'confirmed'],
    dismiss: ['new', 'acknowledged', 'confirmed', 'dismissed'],
  };
  const DRAWABLE = ['prepared', 'processed'];
  const PARCELS_MIN_ZOOM = 14;
  const STYLE = {
    area: { color: '#e5e7eb', weight: 1.5, dashArray: '6 4', fill: false, interactive: false },
    parcel: { color: '#f8fafc', weight: 1, opacity: 0.75, fill: false },
    change: { color: '#fb923c', weight: 1.5, opacity: 0.95, fillColor: '#fb923c', fillOpacity: 0.2 },
    settlement: { color: '#d97706', weight: 2, opacity: 0.9, dashArray: '5 3', fillColor: '#d97706', fillOpacity: 0.12 },
    alert: { color: '#f43f5e', weight: 1.5, opacity: 0.9, fillColor: '#f43f5e', fillOpacity: 0.15 },
    alertParcel: { color: '#facc15', weight: 3, opacity: 1, fill: false, interactive: false },
    construction: { color: '#ef4444', weight: 2.5, opacity: 1, fillColor: '#ef4444', fillOpacity: 0.3, interactive: false },
  };

  const $ = (id) => document.getElementById(id);
  const state = {
    token: null, who: null, canWrite: false, areas: [], alerts: [], shown: [], counts: null,
    selected: null, area: null, scenes: [], tilejson: new Map(), map: null, layers: {}, loads: 0,
    settlementDates: new Set(), settlementsOf: null,
  };

  // ---------------------------------------------------------------- helpers

  /** An element with attributes and children (strings become text nodes: nothing is parsed as HTML). */
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'class') node.className = v;
      else if (k === 'dataset') Object.assign(node.dataset, v);
      else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? '' : v);
    }
    for (const c of children.flat(Infinity)) {
      if (c === null || c === undefined || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  /** Leaflet takes tooltips as HTML strings or elements: data goes in as an element holding text. */
  const text = (s) => el('span', {}, s);
  const escapeHtml = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

  const fmt = {
    m2: (v) => `${Math.round(v).toLocaleString('en')} m²`,
    pct: (v) => `${(v * 100).toFixed(v < 0.1 ? 1 : 0)} %`,
    km2: (v) => (v === null || v === undefined ? '–' : v.toFixed(3)),
    date: (iso) => (iso ? iso.slice(0, 10) : '–'),
    when: (iso) => (iso ? new Date(iso).toLocaleString('en-GB', { dateStyle: 'medium', timeStyle: 'short' }) : '–'),
  };

  function badge(kind, value) {
    return el('span', { class: `badge ${kind}-${value}` }, value);
  }

  function query(params) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) if (v !== null && v !== undefined && v !== '') q.set(k, v);
    const s = q.toString();
    return s ? `?${s}` : '';
  }

  // ---------------------------------------------------------------- API

  class ApiError extends Error {
    constructor(status, detail) {
      super(detail);
      this.status = status;
    }
  }

  /** Calls the API with the token; relative URLs, so the page works under any path prefix. */
  async function api(path, { method = 'GET', body, signal, raw = false } = {}) {
    const headers = { Authorization: `Bearer ${state.token}` };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    let response;
    try {
      response = await fetch(path, {
        method, headers, signal, cache: raw ? 'default' : 'no-store',
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (e) {
      if (e.name === 'AbortError') throw e;
      throw new ApiError(0, 'the server cannot be reached');
    }
    if (response.status === 401 && state.who) {
      signOut('The server refused the token (revoked?). Sign in again.');
    }
    if (!response.ok) {
      let detail = response.statusText;
      try { detail = (await response.json()).detail || detail; } catch (_) { /* not JSON */ }
      throw new ApiError(response.status, typeof detail === 'string' ? detail : JSON.stringify(detail));
    }
    if (raw) return response;
    return response.status === 204 ? null : response.json();
  }

  // ---------------------------------------------------------------- sign in / out

  function showSignIn(message = '') {
    $('app').hidden = true;
    $('signin').hidden = false;
    $('signin-error').textContent = message;
    $('token').value = '';
    $('token').focus();
  }

  function signOut(message = '') {
    sessionStorage.removeItem(TOKEN_KEY);
    state.token = null;
    state.who = null;
    showSignIn(message);
  }

  async function signIn(token) {
    state.token = token;
    const who = await api('auth/token');
    sessionStorage.setItem(TOKEN_KEY, token);
    state.who = who;
    state.canWrite = who.scopes.includes('write');
    $('who-name').textContent = who.name;
    $('who-scope').textContent = state.canWrite ? 'write' : 'read only';
    $('who-scope').className = `badge scope-${state.canWrite ? 'write' : 'read'}`;
    $('signin').hidden = true;
    $('app').hidden = false;
    await startApp();
  }

  $('signin-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const token = $('token').value.trim();
    if (!token) return;
    $('signin-button').disabled = true;
    $('signin-error').textContent = '';
    try {
      await signIn(token);
    } catch (e) {
      state.token = null;
      $('signin-error').textContent = e.status === 401 ? 'This token is not valid (mistyped or revoked).'
        : `Cannot sign in: ${e.message}`;
    } finally {
      $('signin-button').disabled = false;
    }
  });
  $('signout').addEventListener('click', () => signOut());

  // ---------------------------------------------------------------- filters, counts, list

  function filters() {
    return {
      area: $('f-area').value, status: $('f-status').value, confidence: $('f-confidence').value,
      since: $('f-since').value, until: $('f-until').value,
    };
  }

  function fillSelect(select, options, value) {
    select.replaceChildren(...options.map(([v, label]) => el('option', { value: v }, label)));
    if (options.some(([v]) => v === value)) select.value = value;
  }

  function renderFilterOptions() {
    const c = state.counts || { total: 0, open: 0, by_status: {}, by_status_confidence: {} };
    const f = filters();
    fillSelect($('f-status'), [
      ['open', `Open (${c.open})`],
      ...STATUSES.map((s) => [s, `${s[0].toUpperCase()}${s.slice(1)} (${c.by_status[s] || 0})`]),
      ['all', `All (${c.total})`],
    ], f.status || 'open');
    const statuses = f.status === 'all' ? STATUSES : f.status === 'open' ? OPEN : [f.status];
    const per = (conf) => statuses.reduce((n, s) => n + ((c.by_status_confidence[s] || {})[conf] || 0), 0);
    fillSelect($('f-confidence'), [
      ['', `Any (${CONFIDENCES.reduce((n, k) => n + per(k), 0)})`],
      ...CONFIDENCES.map((k) => [k, `${k[0].toUpperCase()}${k.slice(1)} (${per(k)})`]),
    ], f.confidence);
  }

  function renderCounts() {
    const c = state.counts;
    const box = $('counts');
    if (!c) { box.replaceChildren(); return; }
    const f = filters();
    const chip = (label, n, active, onclick, title) => el('button', {
      type: 'button', class: `count${active ? ' active' : ''}`, title, onclick,
    }, el('b', {}, String(n)), ' ', label);
    const setStatus = (status) => () => { $('f-status').value = status; loadAlerts(); };
    const setConfidence = (conf) => () => {
      $('f-confidence').value = f.confidence === conf ? '' : conf;
      applyConfidence(); renderCounts(); drawAlerts();
    };
    const statuses = f.status === 'all' ? STATUSES : f.status === 'open' ? OPEN : [f.status];
    const per = (conf) => statuses.reduce((n, s) => n + ((c.by_status_confidence[s] || {})[conf] || 0), 0);
    box.replaceChildren(
      el('div', { class: 'group' }, el('span', { class: 'glabel' }, 'Status'),
        chip('open', c.open, f.status === 'open', setStatus('open'), 'New, acknowledged or confirmed'),
        // statuses without alerts are left out, unless chosen
        ...STATUSES.filter((s) => c.by_status[s] || f.status === s)
          .map((s) => chip(s, c.by_status[s] || 0, f.status === s, setStatus(s), `Show ${s} alerts`)),
        chip('all', c.total, f.status === 'all', setStatus('all'), 'Every alert')),
      el('div', { class: 'group' }, el('span', { class: 'glabel' }, 'Confidence'),
        ...CONFIDENCES.map((k) => chip(k, per(k), f.confidence === k, setConfidence(k),
          k === 'confirmed' ? 'Seen again on a later date' : 'Seen on one date so far'))),
    );
  }

  async function loadAlerts({ keepSelection = true } = {}) {
    const f = filters();
    if (f.since && f.until && f.until < f.since) {
      $('list-summary').textContent = '“until” is before “since”.';
      return;
    }
    const common = { area: f.area, since: f.since, until: f.until };
    const load = ++state.loads;
    $('list-summary').textContent = 'Loading…';
    $('alerts').setAttribute('aria-busy', 'true');
    try {
      const [fc, counts] = await Promise.all([
        api(`alerts${query({ ...common, status: f.status === 'all' ? '' : f.status })}`),
        api(`alerts/counts${query(common)}`),
      ]);
      if (load !== state.loads) return; // a newer request is on its way
      state.alerts = fc.features;
      state.counts = counts;
    } catch (e) {
      if (load !== state.loads) return;
      $('list-summary').textContent = `Cannot load the alerts: ${e.message}`;
      $('alerts').setAttribute('aria-busy', 'false');
      return;
    }
    $('alerts').setAttribute('aria-busy', 'false');
    renderFilterOptions();
    renderCounts();
    applyConfidence();
    const wanted = keepSelection && state.selected ? state.selected.id : hashAlert();
    const found = state.shown.find((a) => a.id === wanted);
    if (found) selectAlert(found, { pan: !state.selected || state.selected.id !== found.id });
    else if (state.shown.length && !state.selected) selectAlert(state.shown[0]);
    drawAlerts();
  }

  function applyConfidence() {
    const conf = $('f-confidence').value;
    state.shown = state.alerts.filter((a) => !conf || a.properties.confidence === conf);
    renderList();
  }

  function renderList() {
    const list = $('alerts');
    const total = state.alerts.length;
    $('list-summary').textContent = state.shown.length === total
      ? `${total} alert${total === 1 ? '' : 's'}`
      : `${state.shown.length} of ${total} alerts`;
    if (!state.shown.length) {
      list.replaceChildren(el('li', { class: 'none' }, 'No alert matches these filters.'));
      return;
    }
    const status = $('f-status').value;
    const wanted = status === 'all' ? STATUSES : status === 'open' ? OPEN : [status];
    list.replaceChildren(...state.shown.map((a) => {
      const p = a.properties;
      // an alert reviewed here may no longer match the filter: it stays until the list is loaded again
      const stale = !wanted.includes(p.status);
      return el('li', {
        class: `alert${state.selected && state.selected.id === a.id ? ' selected' : ''}${stale ? ' stale' : ''}`,
        dataset: { id: a.id }, onclick: () => selectAlert(a),
        title: stale ? `Now ${p.status}: no longer matches the status filter` : null,
      },
      el('div', { class: 'line1' }, el('span', { class: 'id' }, `#${a.id}`), el('span', { class: 'parcel' }, p.parcel),
        badge('confidence', p.confidence), badge('status', p.status)),
      el('div', { class: 'line2' }, el('span', { class: 'dates' }, `${p.first_seen} → ${p.last_seen}`),
        el('span', { class: 'm2' }, fmt.m2(p.new_area_m2)),
        $('f-area').value ? null : el('span', { class: 'area' }, p.area)));
    }));
    const sel = list.querySelector('.selected');
    if (sel) sel.scrollIntoView({ block: 'nearest' });
  }

  for (const id of ['f-area', 'f-status', 'f-since', 'f-until']) {
    $(id).addEventListener('change', () => loadAlerts());
  }
  $('f-confidence').addEventListener('change', () => { applyConfidence(); renderCounts(); drawAlerts(); });

  // Up and down move through the list when focus is not in a field.
  document.addEventListener('keydown', (ev) => {
    if ($('app').hidden || ev.altKey || ev.ctrlKey || ev.metaKey) return;
    if (['INPUT', 'SELECT', 'TEXTAREA', 'BUTTON'].includes(document.activeElement.tagName)
        && document.activeElement.id !== 'alerts') return;
    if (ev.key !== 'ArrowDown' && ev.key !== 'ArrowUp') return;
    const i = state.shown.findIndex((a) => state.selected && a.id === state.selected.id);
    const next = state.shown[Math.max(0, Math.min(state.shown.length - 1, i + (ev.key === 'ArrowDown' ? 1 : -1)))];
    if (next) { ev.preventDefault(); selectAlert(next); }
  });

  function hashAlert() {
    const m = /alert=(\d+)/.exec(window.location.hash);
    return m ? Number(m[1]) : null;
  }

  // ---------------------------------------------------------------- map

  /** A tile layer that fetches its tiles with the bearer token (an <img> cannot send one). */
  const AuthTileLayer = L.TileLayer.extend({
    createTile(coords, done) {
      const img = document.createElement('img');
      img.alt = '';
      img.setAttribute('role', 'presentation');
      const controller = new AbortController();
      img._controller = controller;
      api(this.getTileUrl(coords), { raw: true, signal: controller.signal })
        .then(async (response) => {
          if (response.status === 204) { done(null, img); return; }
          const url = URL.createObjectURL(await response.blob());
          img.onload = () => { URL.revokeObjectURL(url); done(null, img); };
          img.onerror = () => { URL.revokeObjectURL(url); done(new Error('bad tile image'), img); };
          img.src = url;
        })
        .catch((e) => { if (e.name !== 'AbortError') done(e, img); });
      return img;
    },
    _abortLoading() {
      for (const key of Object.keys(this._tiles)) {
        const tile = this._tiles[key];
        if (tile.coords.z !== this._tileZoom && tile.el._controller) tile.el._controller.abort();
      }
      L.TileLayer.prototype._abortLoading.call(this);
    },
    _removeTile(key) {
      const tile = this._tiles[key];
      if (tile && tile.el._controller) tile.el._controller.abort();
      L.TileLayer.prototype._removeTile.call(this, key);
    },
  });

  function initMap() {
    if (state.map) return;
    const map = L.map('map', { zoomControl: true, maxZoom: 22, minZoom: 2, zoomSnap: 0.5, attributionControl: true });
    map.attributionControl.setPrefix('<a href="https://leafletjs.com" target="_blank" rel="noopener">Leaflet</a>');
    map.createPane('before').style.zIndex = 200;
    map.createPane('after').style.zIndex = 210;
    const canvas = L.canvas({ padding: 0.3 });
    state.layers = {
      before: null, after: null,
      area: L.geoJSON(null, { style: STYLE.area }).addTo(map),
      settlements: L.geoJSON(null, {
        style: STYLE.settlement,
        onEachFeature: (f, layer) => {
          const p = f.properties;
          const carried = p.carried_share ? ` · ${fmt.pct(p.carried_share)} carried over from an earlier date` : '';
          const prob = p.probability === null ? '' : ` · probability ${p.probability.toFixed(2)}`;
          layer.bindTooltip(text(`settlement ${p.observed_on}, ${fmt.m2(p.area_m2)}${prob}${carried}`), { sticky: true });
        },
      }).addTo(map),
      parcels: L.geoJSON(null, {
        style: STYLE.parcel, renderer: canvas,
        onEachFeature: (f, layer) => layer.bindTooltip(text(`parcel ${f.properties.external_id}`), { sticky: true }),
      }).addTo(map),
      changes: L.geoJSON(null, {
        style: STYLE.change, renderer: canvas,
        onEachFeature: (f, layer) => layer.bindTooltip(text(
          `change seen ${f.properties.observed_on} (vs ${f.properties.previous_on || '–'}), ${fmt.m2(f.properties.area_m2)}`),
          { sticky: true }),
      }).addTo(map),
      alerts: L.geoJSON(null, {
        style: STYLE.alert,
        onEachFeature: (f, layer) => {
          layer.bindTooltip(text(`alert #${f.id} · ${f.properties.parcel}`), { sticky: true });
          layer.on('click', () => selectAlert(state.shown.find((a) => a.id === f.id) || f));
        },
      }).addTo(map),
      parcel: L.geoJSON(null, { style: STYLE.alertParcel }).addTo(map),
      construction: L.geoJSON(null, { style: STYLE.construction }).addTo(map),
    };
    state.map = map;
    map.on('move zoom resize viewreset', clipSwipe);
    map.on('moveend', debounce(loadVectors, 250));
    $('swipe').addEventListener('input', clipSwipe);
    for (const [box, layer] of [['show-parcels', 'parcels'], ['show-changes', 'changes'], ['show-alerts', 'alerts'],
      ['show-settlements', 'settlements']]) {
      $(box).addEventListener('change', () => {
        if ($(box).checked) state.layers[layer].addTo(map); else state.layers[layer].remove();
        if ($(box).checked) loadVectors();
      });
    }
    $('scene-before').addEventListener('change', () => showScene('before', Number($('scene-before').value)));
    $('scene-after').addEventListener('change', () => showScene('after', Number($('scene-after').value)));
    map.setView([0, 0], 2);
  }

  function debounce(fn, ms) {
    let t = null;
    return (...args) => { clearTimeout(t); t = setTimeout(() => fn(...args), ms); };
  }

  /** Before on the left of the divider, after on its right: each pane is clipped to its side. */
  function clipSwipe() {
    const map = state.map;
    if (!map) return;
    const size = map.getSize();
    const nw = map.containerPointToLayerPoint([0, 0]);
    const se = map.containerPointToLayerPoint(size);
    const x = size.x * Number($('swipe').value) / 100;
    map.getPane('before').style.clip = `rect(${nw.y}px, ${nw.x + x}px, ${se.y}px, ${nw.x}px)`;
    map.getPane('after').style.clip = `rect(${nw.y}px, ${se.x}px, ${se.y}px, ${nw.x + x}px)`;
    $('divider').style.left = `${x}px`;
  }

  function mapMessage(text) {
    $('map-message').textContent = text || '';
    $('map-message').hidden = !text;
  }

  async function tileJson(sceneId) {
    if (!state.tilejson.has(sceneId)) {
      state.tilejson.set(sceneId, api(`scenes/${sceneId}/tiles.json`).catch((e) => {
        state.tilejson.delete(sceneId);
        throw e;
      }));
    }
    return state.tilejson.get(sceneId);
  }

  async function showScene(side, sceneId) {
    const map = state.map;
    if (state.layers[side]) { state.layers[side].remove(); state.layers[side] = null; }
    const label = $(`label-${side}`);
    if (!sceneId) {
      label.textContent = `${side === 'before' ? 'Before' : 'After'}: no imagery`;
      return;
    }
    let tj;
    try {
      tj = await tileJson(sceneId);
    } catch (e) {
      label.textContent = `${side}: ${e.message}`;
      return;
    }
    if (Number($(`scene-${side}`).value) !== sceneId) return; // changed meanwhile
    const [w, s, e, n] = tj.bounds;
    state.layers[side] = new AuthTileLayer(tj.tiles[0], {
      // two levels past the scene's own resolution the server still draws each pixel crisp (nearest)
      pane: side, bounds: L.latLngBounds([s, w], [n, e]), maxNativeZoom: tj.maxzoom + 2, maxZoom: 22,
      minZoom: 0, keepBuffer: 1, updateWhenZooming: false,
      attribution: escapeHtml(`${tj.provider} ${fmt.date(tj.acquired_at)}`),
    }).addTo(map);
    const cloud = tj.cloud_cover === null || tj.cloud_cover === undefined ? '' : ` · ${tj.cloud_cover.toFixed(0)} % cloud`;
    label.replaceChildren(el('b', {}, `${side === 'before' ? 'Before' : 'After'} · ${fmt.date(tj.acquired_at)}`),
      el('span', {}, `${tj.rendering} ${tj.bands.join(' ')}${cloud}`));
    clipSwipe();
    loadVectors();
  }

  function sceneOptions(select, chosen) {
    const scenes = state.scenes;
    fillSelect(select, scenes.length
      ? scenes.map((sc) => [String(sc.id), `${fmt.date(sc.acquired_at)} · ${sc.provider}`
        + (sc.cloud_cover ? ` · ${sc.cloud_cover.toFixed(0)} % cloud` : '')])
      : [['', 'no imagery']], chosen ? String(chosen.id) : '');
  }

  async function loadArea(name) {
    if (state.area === name) return;
    state.area = name;
    const [geometry, scenes, history] = await Promise.all([
      api(`areas/${encodeURIComponent(name)}/geometry`),
      api(`areas/${encodeURIComponent(name)}/scenes?limit=1000`),
      api(`areas/${encodeURIComponent(name)}/history`),
    ]);
    if (state.area !== name) return;
    state.layers.area.clearLayers().addData(geometry);
    // the dates with a settlement layer (an area with a classifier): the others have none to ask for
    state.settlementDates = new Set(history.filter((r) => r.settlement_km2 !== null && r.settlement_km2 !== undefined)
      .map((r) => r.observed_on));
    state.scenes = scenes.filter((sc) => DRAWABLE.includes(sc.status) && sc.file_path)
      .sort((a, b) => a.acquired_at.localeCompare(b.acquired_at));
  }

  /** Before: the newest scene before the alert was first seen; after: the date it was last seen. */
  function scenesFor(alert) {
    const p = alert.properties;
    const day = (sc) => sc.acquired_at.slice(0, 10);
    const before = [...state.scenes].reverse().find((sc) => day(sc) < p.first_seen) || state.scenes[0] || null;
    const after = state.scenes.find((sc) => day(sc) === p.last_seen)
      || [...state.scenes].reverse().find((sc) => day(sc) <= p.last_seen) || state.scenes[state.scenes.length - 1] || null;
    return [before, after];
  }

  async function showAlertOnMap(alert, { pan = true } = {}) {
    initMap();
    mapMessage('');
    try {
      await loadArea(alert.properties.area);
    } catch (e) {
      mapMessage(`Cannot load the area: ${e.message}`);
      return;
    }
    if (!state.selected || state.selected.id !== alert.id) return;
    const [before, after] = scenesFor(alert);
    sceneOptions($('scene-before'), before);
    sceneOptions($('scene-after'), after);
    if (!state.scenes.length) mapMessage('This area has no prepared imagery yet.');
    state.layers.construction.clearLayers().addData(alert);
    state.layers.parcel.clearLayers();
    if (pan) {
      const bounds = L.geoJSON(alert).getBounds();
      state.map.fitBounds(bounds.pad(2.5), { maxZoom: 18, animate: false });
    }
    await Promise.all([showScene('before', before && before.id), showScene('after', after && after.id)]);
  }

  function sceneDate(side) {
    const id = Number($(`scene-${side}`).value);
    const sc = state.scenes.find((s) => s.id === id);
    return sc ? sc.acquired_at.slice(0, 10) : '';
  }

  let vectorController = null;
  async function loadVectors() {
    const map = state.map;
    if (!map || !state.area) return;
    if (vectorController) vectorController.abort();
    vectorController = new AbortController();
    const { signal } = vectorController;
    const b = map.getBounds();
    const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, v));
    const bbox = [clamp(b.getWest(), -180, 180), clamp(b.getSouth(), -90, 90), clamp(b.getEast(), -180, 180),
      clamp(b.getNorth(), -90, 90)].map((v) => v.toFixed(6)).join(',');
    const area = encodeURIComponent(state.area);
    const jobs = [];
    if ($('show-parcels').checked && map.getZoom() >= PARCELS_MIN_ZOOM) {
      jobs.push(api(`areas/${area}/parcels${query({ bbox, limit: 5000 })}`, { signal }).then((fc) => {
        state.layers.parcels.clearLayers().addData(fc);
      }));
    } else {
      state.layers.parcels.clearLayers();
    }
    const before = sceneDate('before');
    const since = before ? new Date(Date.parse(before) + 86400000).toISOString().slice(0, 10) : '';
    const until = sceneDate('after');
    if ($('show-changes').checked && !(since && until && until < since)) {
      // the changes between the two dates shown: seen after the before date, up to the after date
      jobs.push(api(`areas/${area}/changes${query({ bbox, since, until, limit: 5000 })}`, { signal })
        .then((fc) => { state.layers.changes.clearLayers().addData(fc); }));
    } else {
      state.layers.changes.clearLayers();
    }
    // the settlement layer of the after date, where it has one (the whole layer, fetched once per date)
    const settlementsOf = state.settlementDates.has(until) ? `${state.area} ${until}` : null;
    if ($('show-settlements').checked && settlementsOf && settlementsOf !== state.settlementsOf) {
      jobs.push(api(`areas/${area}/settlements${query({ date: until })}`, { signal }).then((fc) => {
        state.layers.settlements.clearLayers().addData(fc);
        state.settlementsOf = settlementsOf;
      }));
    } else if (!$('show-settlements').checked || !settlementsOf) {
      state.layers.settlements.clearLayers();
      state.settlementsOf = null;
    }
    if (state.selected && state.selected.properties.area === state.area) {
      const p = state.selected.properties;
      jobs.push(api(`areas/${area}/parcels/${encodeURIComponent(p.parcel)}`, { signal }).then((f) => {
        state.layers.parcel.clearLayers().addData(f);
      }));
    }
    try {
      await Promise.all(jobs);
    } catch (e) {
      if (e.name !== 'AbortError') mapMessage(`Cannot load the map's shapes: ${e.message}`);
    }
  }

  function drawAlerts() {
    if (!state.map) return;
    state.layers.alerts.clearLayers();
    const others = state.shown.filter((a) => a.properties.area === state.area);
    state.layers.alerts.addData({ type: 'FeatureCollection', features: others });
  }

  // ---------------------------------------------------------------- details

  function selectAlert(alert, { pan = true } = {}) {
    const changed = !state.selected || state.selected.id !== alert.id;
    state.selected = alert;
    if (changed) history.replaceState(null, '', `#alert=${alert.id}`);
    for (const li of $('alerts').querySelectorAll('li.alert')) {
      li.classList.toggle('selected', Number(li.dataset.id) === alert.id);
    }
    const sel = $('alerts').querySelector('.selected');
    if (sel) sel.scrollIntoView({ block: 'nearest' });
    renderDetails(alert);
    loadParcel(alert);
    if (changed || pan) showAlertOnMap(alert, { pan: changed && pan }).then(drawAlerts);
  }

  function renderDetails(alert) {
    const p = alert.properties;
    const facts = [
      ['Area', p.area], ['Parcel', p.parcel],
      ['Status', p.status], ['Confidence', p.confidence === 'confirmed' ? 'confirmed (seen again on a later date)'
        : 'probable (seen on one date so far)'],
      ['First seen', p.first_seen], ['Last seen', p.last_seen],
      ['New construction', `${fmt.m2(p.new_area_m2)} (${fmt.pct(p.fraction)} of the parcel)`],
      ['Found by', `${p.source}${p.model_version ? ` · ${p.model_version}` : ''}`],
      ['Reviewed', p.reviewed_by ? `${p.reviewed_by}, ${fmt.when(p.reviewed_at)}` : 'not yet'],
    ];
    if (p.note) facts.push(['Note', p.note]);
    $('details').replaceChildren(
      el('header', { class: 'dhead' },
        el('h2', {}, `Alert #${alert.id}`), badge('confidence', p.confidence), badge('status', p.status)),
      el('dl', { class: 'facts' }, facts.map(([k, v]) => [el('dt', {}, k), el('dd', {}, v)])),
      evidenceBox(p),
      reviewBox(alert),
      el('h3', {}, 'Permits of the parcel'), el('div', { id: 'permits', class: 'block' }, 'Loading…'),
      el('h3', {}, 'Parcel history'), el('div', { id: 'parcel-history', class: 'block' }, 'Loading…'),
      el('h3', {}, `Area ${p.area}: built and settlement km²`), el('div', { id: 'area-chart', class: 'block' }, 'Loading…'),
    );
  }

  /** The evidence chips: signed links from the API (an <img> sends no Authorization header). */
  function evidenceBox(p) {
    const names = ['before', 'after'].filter((n) => p.evidence && p.evidence[n]);
    if (!names.length) return el('p', { class: 'evidence-none' }, 'No evidence chips: no scene file to draw them from.');
    return el('div', { class: 'evidence' }, names.map((n) => el('figure', {},
      el('a', { href: p.evidence[n], target: '_blank', rel: 'noopener noreferrer', title: `Open the ${n} chip` },
        el('img', { src: p.evidence[n], alt: `${n === 'before' ? 'Before' : 'After'}: parcel ${p.parcel}`,
          class: `chip chip-${n}`, loading: 'lazy' })),
      el('figcaption', {}, n === 'before' ? 'Before' : 'After'))));
  }

  function reviewBox(alert) {
    if (!state.canWrite) {
      return el('p', { class: 'readonly' }, 'This token can read only: reviewing needs a write token.');
    }
    const p = alert.properties;
    const note = el('textarea', { id: 'review-note', rows: 2, maxlength: 5000,
      placeholder: 'Note; a reason is required to dismiss' });
    const message = el('p', { id: 'review-message', class: 'review-message', role: 'status' });
    const button = (action, label, cls) => el('button', {
      type: 'button', id: `review-${action}`, class: cls, disabled: !ALLOWED_FROM[action].includes(p.status),
      title: ALLOWED_FROM[action].includes(p.status) ? '' : `An alert that is ${p.status} cannot be ${label.toLowerCase()}ed`,
      onclick: () => review(alert, action, note, message),
    }, label);
    return el('div', { class: 'review' },
      el('label', { for: 'review-note' }, 'Review'), note,
      el('div', { class: 'buttons' },
        button('ack', 'Acknowledge', 'secondary'), button('confirm', 'Confirm', 'confirm'),
        button('dismiss', 'Dismiss', 'dismiss')),
      message);
  }

  async function review(alert, action, noteField, message) {
    const note = noteField.value.trim();
    if (action === 'dismiss' && !note) {
      message.textContent = 'Give the reason for dismissing it.';
      message.className = 'review-message error';
      noteField.focus();
      return;
    }
    for (const b of document.querySelectorAll('.review button')) b.disabled = true;
    message.className = 'review-message';
    message.textContent = 'Saving…';
    try {
      const updated = await api(`alerts/${alert.id}/review`, { method: 'POST', body: { action, note: note || null } });
      const i = state.alerts.findIndex((a) => a.id === updated.id);
      if (i >= 0) state.alerts[i] = updated;
      state.selected = updated;
      renderDetails(updated);
      loadParcel(updated);
      const done = { ack: 'acknowledged', confirm: 'confirmed', dismiss: 'dismissed' }[action];
      $('review-message').textContent = `Alert #${updated.id} ${done}.`;
      $('review-message').className = 'review-message ok';
      // refresh counts and the list; the reviewed alert stays selected even if the filter now hides it
      const counts = await api(`alerts/counts${query({ area: filters().area, since: filters().since, until: filters().until })}`);
      state.counts = counts;
      renderFilterOptions();
      renderCounts();
      applyConfidence();
      drawAlerts();
    } catch (e) {
      message.textContent = `Not saved: ${e.message}`;
      message.className = 'review-message error';
      renderDetailsButtons(alert);
    }
  }

  function renderDetailsButtons(alert) {
    for (const [action, allowed] of Object.entries(ALLOWED_FROM)) {
      const b = $(`review-${action}`);
      if (b) b.disabled = !allowed.includes(alert.properties.status);
    }
  }

  async function loadParcel(alert) {
    const p = alert.properties;
    const area = encodeURIComponent(p.area);
    const parcel = encodeURIComponent(p.parcel);
    const [permits, history, areaHistory] = await Promise.allSettled([
      api(`areas/${area}/permits${query({ parcel: p.parcel })}`),
      api(`areas/${area}/parcels/${parcel}/history`),
      api(`areas/${area}/history`),
    ]);
    if (!state.selected || state.selected.id !== alert.id) return;
    const put = (id, result, render) => {
      const box = $(id);
      if (!box) return;
      if (result.status === 'rejected') box.replaceChildren(el('p', { class: 'error' }, result.reason.message));
      else box.replaceChildren(render(result.value));
    };
    put('permits', permits, (rows) => renderPermits(rows, p));
    put('parcel-history', history, renderParcelHistory);
    put('area-chart', areaHistory, (rows) => areaChart(rows, p));
  }

  function table(head, rows) {
    return el('table', {}, el('thead', {}, el('tr', {}, head.map((h) => el('th', {}, h)))),
      el('tbody', {}, rows.map((r) => el('tr', {}, r.map((c) => el('td', {}, c))))));
  }

  function renderPermits(rows, p) {
    if (!rows.length) return el('p', { class: 'muted' }, 'No permit on record for this parcel.');
    const covers = (r) => r.valid_from <= p.first_seen && (!r.valid_to || p.first_seen <= r.valid_to);
    return table(['Permit', 'Kind', 'Valid', 'On first sighting'], rows.map((r) => [
      r.permit_id, r.kind || '–', `${r.valid_from} – ${r.valid_to || 'open'}`,
      covers(r) ? 'valid' : (r.valid_to && r.valid_to < p.first_seen ? 'expired' : 'not yet valid'),
    ]));
  }

  function renderParcelHistory(rows) {
    if (!rows.length) return el('p', { class: 'muted' }, 'No processed date yet.');
    return table(['Date', 'Clear', 'Built', 'New', 'Verdict'], rows.map((r) => [
      r.observed_on, r.clear ? 'yes' : 'no', fmt.m2(r.built_m2 || 0),
      r.new_m2 ? fmt.m2(r.new_m2) : '–', r.verdict || '–',
    ]));
  }

  /** A small SVG line chart of built-up and settlement km² per date, the alert's dates marked. */
  function areaChart(rows, p) {
    if (!rows.length) return el('p', { class: 'muted' }, 'No processed date yet.');
    const NS = 'http://www.w3.org/2000/svg';
    const svg = (tag, attrs = {}, text = null) => {
      const n = document.createElementNS(NS, tag);
      for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
      if (text !== null) n.textContent = text;
      return n;
    };
    const W = 340; const H = 150; const L0 = 40; const R0 = 10; const T0 = 10; const B0 = 28;
    const t = rows.map((r) => Date.parse(r.observed_on));
    const t0 = Math.min(...t); const t1 = Math.max(...t);
    const series = [['built_km2', 'built-up', 'built'], ['settlement_km2', 'settlement', 'settlement']];
    const values = rows.flatMap((r) => series.map(([k]) => r[k]).filter((v) => v !== null && v !== undefined));
    const vmax = Math.max(0.001, ...values) * 1.1;
    const x = (ms) => L0 + (t1 === t0 ? (W - L0 - R0) / 2 : ((ms - t0) / (t1 - t0)) * (W - L0 - R0));
    const y = (v) => H - B0 - (v / vmax) * (H - T0 - B0);
    const root = svg('svg', { viewBox: `0 0 ${W} ${H}`, class: 'chart', role: 'img',
      'aria-label': `built-up and settlement km² per date for area ${p.area}` });
    for (const frac of [0, 0.5, 1]) {
      const v = vmax * frac / 1.1;
      root.append(svg('line', { x1: L0, x2: W - R0, y1: y(v), y2: y(v), class: 'grid' }));
      root.append(svg('text', { x: L0 - 4, y: y(v) + 3, class: 'axis', 'text-anchor': 'end' }, v.toFixed(v < 0.1 ? 3 : 2)));
    }
    for (const [day, cls] of [[p.first_seen, 'mark-first'], [p.last_seen, 'mark-last']]) {
      const ms = Date.parse(day);
      if (ms >= t0 && ms <= t1) root.append(svg('line', { x1: x(ms), x2: x(ms), y1: T0, y2: H - B0, class: cls }));
    }
    rows.forEach((r, i) => {
      if (i === 0 || i === rows.length - 1 || rows.length <= 5) {
        const anchor = rows.length === 1 ? 'middle' : i === 0 ? 'start' : i === rows.length - 1 ? 'end' : 'middle';
        root.append(svg('text', { x: x(t[i]), y: H - B0 + 14, class: 'axis', 'text-anchor': anchor }, r.observed_on));
      }
    });
    const drawn = new Set();
    for (const [key, label, cls] of series) {
      const pts = rows.map((r, i) => [t[i], r[key]]).filter(([, v]) => v !== null && v !== undefined);
      if (!pts.length) continue;
      drawn.add(cls);
      root.append(svg('polyline', { points: pts.map(([ms, v]) => `${x(ms)},${y(v)}`).join(' '), class: `line ${cls}` }));
      for (const [ms, v] of pts) {
        const dot = svg('circle', { cx: x(ms), cy: y(v), r: 3, class: `dot ${cls}` });
        dot.append(svg('title', {}, `${label} ${new Date(ms).toISOString().slice(0, 10)}: ${v.toFixed(3)} km²`));
        root.append(dot);
      }
    }
    const legend = el('div', { class: 'chart-legend' },
      drawn.has('built') && el('span', {}, el('i', { class: 'sw built' }), 'built-up km²'),
      drawn.has('settlement') ? el('span', {}, el('i', { class: 'sw settlement' }), 'settlement km²')
        : el('span', {}, 'no settlement figures'),
      el('span', {}, el('i', { class: 'sw mark' }), 'first / last seen'));
    const wrap = el('div', {});
    wrap.append(root, legend);
    return wrap;
  }

  // ---------------------------------------------------------------- start

  async function startApp() {
    initMap();
    try {
      state.areas = await api('areas');
    } catch (e) {
      $('list-summary').textContent = `Cannot load the areas: ${e.message}`;
      return;
    }
    const current = $('f-area').value;
    fillSelect($('f-area'), [['', 'All areas'], ...state.areas.map((a) => [a.name, a.name])],
      current || (state.areas.length === 1 ? state.areas[0].name : ''));
    renderFilterOptions();
    if (!state.areas.length) {
      $('list-summary').textContent = 'No area is watched yet.';
      return;
    }
    if ($('f-area').value) {
      try { await loadArea($('f-area').value); } catch (_) { /* shown when an alert is selected */ }
      if (state.layers.area.getLayers().length) state.map.fitBounds(state.layers.area.getBounds());
    }
    await loadAlerts({ keepSelection: false });
    setTimeout(() => state.map.invalidateSize(), 0);
  }

  window.addEventListener('DOMContentLoaded', () => {
    const saved = sessionStorage.getItem(TOKEN_KEY);
    if (!saved) { showSignIn(); return; }
    signIn(saved).catch((e) => {
      sessionStorage.removeItem(TOKEN_KEY);
      showSignIn(e.status === 401 ? 'The saved token is no longer valid. Sign in again.' : `Cannot sign in: ${e.message}`);
    });
  });
})();
