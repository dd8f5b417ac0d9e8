/* readmit clinician page: plain JavaScript, no libraries, no external requests. Every call goes to the API that
   served the page (relative to it, so it works under an API Gateway stage prefix), with the API key when one is set
   and the access token when the user has signed in (the only other origin is the sign-in's token endpoint). */
(() => {
  'use strict';
  const BASE = location.pathname.endsWith('/') ? location.pathname : location.pathname + '/';
  const KEY_STORE = 'readmit.apiKey';
  const MAX_FILE_ROWS = 10000;
  const TABLE_ROWS = 200;
  const $ = (id) => document.getElementById(id);
  const pct = (x, digits = 1) => (100 * x).toFixed(digits) + '%';
  const num = (n) => n.toLocaleString('en-US');

  /** Build an element: el('p', {class: 'x', text: 'hi'}, child, …). Text is always set as text, never HTML. */
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'text') node.textContent = v;
      else node.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of children) if (c !== null && c !== undefined) node.append(c);
    return node;
  }

  // ---- sign-in ------------------------------------------------------------------------------------------------------
  /* How this page signs in comes from the server as inert JSON (the application/json element #readmit-auth):
     signin 'none' (no sign-in), 'token' (paste an access token) or 'cognito' (the user pool's hosted UI).
     Cognito: the authorization-code grant with PKCE for a public app client (no secret), with the endpoints and
     parameters of the Amazon Cognito developer guide:
       /oauth2/authorize  docs.aws.amazon.com/cognito/latest/developerguide/authorization-endpoint.html
       /oauth2/token      docs.aws.amazon.com/cognito/latest/developerguide/token-endpoint.html (POST, form-encoded;
                          it answers cross-origin calls with Access-Control-Allow-Origin: *, for browser apps)
       PKCE               docs.aws.amazon.com/cognito/latest/developerguide/using-pkce-in-authorization-code.html
       /logout            docs.aws.amazon.com/cognito/latest/developerguide/logout-endpoint.html (client_id, logout_uri)
     The verifier is 64 characters of the unreserved set (RFC 7636 section 4.1 allows 43-128); the challenge is
     BASE64URL(SHA-256(verifier)) without padding (section 4.2, method S256). Only the access token and its expiry
     are kept, in this tab's session storage; the ID and refresh tokens are dropped, and no token is decoded. */
  const AUTH = readAuth();
  const TOKEN_STORE = 'readmit.token'; // {token, expires: ms since the epoch or null}
  const PKCE_STORE = 'readmit.pkce'; // {verifier, state} while the user is away at the hosted UI
  const PAGE_URL = location.origin + BASE; // the app client's callback and sign-out URL
  let authMessage = ''; // why the user must sign in (again), shown beside the sign-in controls

  function readAuth() {
    try { return JSON.parse($('readmit-auth').textContent) || { signin: 'none' }; } catch (err) { return { signin: 'none' }; }
  }
  function stored(key) {
    try { return JSON.parse(sessionStorage.getItem(key) || 'null'); } catch (err) { return null; }
  }
  const query = (params) => Object.entries(params).map(([k, v]) => `${k}=${encodeURIComponent(v)}`).join('&');
  function base64url(bytes) {
    let text = '';
    for (const b of bytes) text += String.fromCharCode(b);
    return btoa(text).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  }
  function randomText(bytes) { return base64url(crypto.getRandomValues(new Uint8Array(bytes))); }

  /** The access token to send, or ''. One past its expiry is dropped here, before the API refuses it. */
  function accessToken() {
    const t = stored(TOKEN_STORE);
    if (!t || typeof t.token !== 'string' || !t.token) return '';
    if (t.expires && Date.now() >= t.expires) {
      sessionStorage.removeItem(TOKEN_STORE);
      authMessage = 'Your sign-in has expired: sign in again.';
      renderAuth();
      return '';
    }
    return t.token;
  }

  function renderAuth() {
    const has = Boolean((stored(TOKEN_STORE) || {}).token);
    if (AUTH.signin === 'cognito') {
      $('signin').hidden = false;
      $('sign-in').hidden = has && !authMessage;
      $('sign-in').textContent = authMessage ? 'Sign in again' : 'Sign in';
      $('sign-out').hidden = !has;
      $('auth-status').textContent = authMessage || (has ? 'Signed in' : 'Not signed in');
      $('auth-status').classList.toggle('attention', Boolean(authMessage));
    } else if (AUTH.signin === 'token' || authMessage) {
      $('token-box').hidden = false;
      if (authMessage) { $('token-note').textContent = authMessage; $('token-box').open = true; }
      else if (AUTH.notice) $('token-note').textContent = AUTH.notice;
    }
  }

  /** A 401: say so where the user signs in. The token is kept unless it expired (a new sign-in replaces it). */
  function unauthenticated(sentToken) {
    if (!sentToken && authMessage) return renderAuth(); // keep the reason already given (expired, sign-in failed)
    authMessage = sentToken ? 'Sign in again: the API did not accept your sign-in.' : 'Not signed in: the API needs a sign-in.';
    renderAuth();
  }

  async function signIn() {
    const verifier = randomText(48);
    const state = randomText(24);
    const digest = await crypto.subtle.digest('SHA-256', new TextEncoder().encode(verifier));
    sessionStorage.setItem(PKCE_STORE, JSON.stringify({ verifier, state }));
    location.assign(`${AUTH.domain}/oauth2/authorize?` + query({
      response_type: 'code', client_id: AUTH.client_id, redirect_uri: PAGE_URL, scope: AUTH.scope, state,
      code_challenge: base64url(new Uint8Array(digest)), code_challenge_method: 'S256',
    }));
  }

  function signOut() {
    sessionStorage.removeItem(TOKEN_STORE);
    location.assign(`${AUTH.domain}/logout?` + query({ client_id: AUTH.client_id, logout_uri: PAGE_URL }));
  }

  /** Back from the hosted UI with ?code=…&state=… (or ?error=…): take them out of the address bar, check the state
      against this tab's, and trade the code and the verifier for tokens at the token endpoint. */
  async function finishSignIn() {
    const params = new URLSearchParams(location.search);
    if (AUTH.signin !== 'cognito' || !(params.has('code') || params.has('error'))) return;
    const code = params.get('code'), state = params.get('state'), error = params.get('error');
    for (const k of ['code', 'state', 'error', 'error_description']) params.delete(k);
    const rest = params.toString();
    history.replaceState(null, '', location.pathname + (rest ? '?' + rest : '') + location.hash);
    const pkce = stored(PKCE_STORE);
    sessionStorage.removeItem(PKCE_STORE); // one use
    const failed = (why) => { authMessage = `Sign-in failed (${why}): sign in again.`; };
    const word = (v) => (/^[a-z_]{1,40}$/.test(v || '') ? v : 'unexpected answer'); // never echo free text
    if (error || !code) return failed(word(error));
    if (!pkce || !state || state !== pkce.state) return failed('the answer does not belong to this tab');
    let res;
    try {
      res = await fetch(`${AUTH.domain}/oauth2/token`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/x-www-form-urlencoded', Accept: 'application/json' },
        body: query({ grant_type: 'authorization_code', client_id: AUTH.client_id, code, redirect_uri: PAGE_URL, code_verifier: pkce.verifier }),
        credentials: 'omit',
        cache: 'no-store',
      });
    } catch (err) {
      return failed('the sign-in service could not be reached');
    }
    const body = await res.json().catch(() => null);
    if (!res.ok || !body || typeof body.access_token !== 'string') return failed(`${res.status} ${word(body && body.error)}`);
    const seconds = Number(body.expires_in);
    const expires = seconds > 0 ? Date.now() + 1000 * Math.max(0, seconds - 30) : null; // 30 s for the clock and the trip
    sessionStorage.setItem(TOKEN_STORE, JSON.stringify({ token: body.access_token, expires }));
    authMessage = '';
  }

  $('sign-in').addEventListener('click', () => {
    signIn().catch(() => { authMessage = 'Sign-in needs this page over https (the browser offers no crypto here).'; renderAuth(); });
  });
  $('sign-out').addEventListener('click', signOut);
  $('token-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const v = $('access-token').value.trim().replace(/^Bearer\s+/i, '');
    if (v) sessionStorage.setItem(TOKEN_STORE, JSON.stringify({ token: v, expires: null })); else sessionStorage.removeItem(TOKEN_STORE);
    $('access-token').value = '';
    authMessage = '';
    $('token-note').textContent = v ? 'Saved for this tab; sent as Authorization: Bearer.' : 'No token: calls are sent without one.';
    signInChanged();
  });

  /** Another identity: what the last one could or could not see is fetched again. */
  function signInChanged() {
    loadStatus();
    modelLoaded = false;
    if (!$('panel-model').hidden) loadModel();
  }

  // ---- API calls --------------------------------------------------------------------------------------------------
  function apiKey() { return sessionStorage.getItem(KEY_STORE) || ''; }

  /** {status, body, challenge, sentToken}: body is parsed JSON (or a Blob when binary); status 0 means the request
      never got an answer; challenge is the WWW-Authenticate header of a 401 or 403. */
  async function call(path, { method = 'GET', body, accept = 'application/json' } = {}) {
    const headers = { Accept: accept };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    if (apiKey()) headers['x-api-key'] = apiKey();
    const token = accessToken();
    if (token) headers.Authorization = 'Bearer ' + token;
    try {
      const res = await fetch(BASE + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: 'no-cache' });
      const type = res.headers.get('Content-Type') || '';
      let data = null;
      if (type.includes('json')) data = await res.json().catch(() => null);
      else if (accept.startsWith('image/') && res.ok) data = await res.blob();
      else data = { error: (await res.text()).slice(0, 200) || res.statusText, details: [] };
      if (res.status === 401) unauthenticated(Boolean(token));
      return { status: res.status, body: data, challenge: res.headers.get('WWW-Authenticate') || '', sentToken: Boolean(token) };
    } catch (err) {
      return { status: 0, body: { error: 'the API could not be reached', details: [] } };
    }
  }

  /** A refusal that signing in (again, or as someone allowed more) would lift: the API's own 401 or 403 forbidden. */
  function denied(res) { return res.status === 401 || (res.status === 403 && (res.body || {}).error === 'forbidden'); }

  /** A feature this deployment does not offer (yet): an unknown route (API Gateway and `chalice local` answer 403
      "Missing Authentication Token"; a catch-all route 404 or 405) or a service without its index (503). */
  function unavailable(res) {
    if (res.status === 403) return ((res.body || {}).message || '') === 'Missing Authentication Token';
    return [404, 405, 501, 503].includes(res.status);
  }

  function problem(res) {
    const b = res.body || {};
    if (res.status === 401) {
      const how = AUTH.signin === 'cognito' ? 'use Sign in at the top of the page' : 'paste an access token under “Access token” at the top of the page';
      return res.sentToken ? `Sign in again: the API did not accept your sign-in (401); ${how}.` : `Sign in first: the API needs a sign-in (401); ${how}.`;
    }
    if (res.status === 403 && b.error === 'forbidden') {
      const scope = /scope="([^"]+)"/.exec(res.challenge || ''); // RFC 6750 section 3: the scope the route needs
      return `your sign-in does not allow this (needs ${scope ? scope[1] : 'readmit/admin'})`;
    }
    const details = (b.details || []).map((d) => `${d.field}: ${d.message}`).join('; ');
    if (res.status === 403) return `the API refused the request (403 ${b.message || ''}): check the API key`;
    return `${b.error || b.message || 'error'} (${res.status})${details ? ': ' + details : ''}`;
  }

  // ---- tabs (WAI-ARIA tabs pattern: arrow keys, Home and End move between tabs) ------------------------------------
  const tabs = [...document.querySelectorAll('[role="tab"]')];
  const onShow = {};
  function select(tab, focus) {
    for (const t of tabs) {
      const on = t === tab;
      t.setAttribute('aria-selected', String(on));
      t.tabIndex = on ? 0 : -1;
      $(t.getAttribute('aria-controls')).hidden = !on;
    }
    if (focus) tab.focus();
    const show = onShow[tab.id];
    if (show) show();
  }
  for (const tab of tabs) {
    tab.addEventListener('click', () => select(tab, false));
    tab.addEventListener('keydown', (e) => {
      const i = tabs.indexOf(tab);
      const next = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: tabs.length - 1 }[e.key];
      if (next === undefined) return;
      e.preventDefault();
      select(tabs[(next + tabs.length) % tabs.length], true);
    });
  }

  // ---- API key --------------------------------------------------------------------------------------------------
  $('api-key').value = apiKey();
  $('key-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const v = $('api-key').value.trim();
    if (v) sessionStorage.setItem(KEY_STORE, v); else sessionStorage.removeItem(KEY_STORE);
    $('key-note').textContent = v ? 'Saved for this tab; sent as x-api-key.' : 'No key: calls are sent without one.';
    loadStatus();
  });

  async function loadStatus() {
    const res = await call('health');
    const b = res.body || {};
    $('model-status').textContent = res.status !== 200 ? 'The API is not reachable.'
      : b.ready ? `Model ${b.model_version} is serving.` : `No model is loaded yet: ${b.detail || ''}`;
  }

  // ---- the encounter form, built from the API's own schema -------------------------------------------------------
  const GROUPS = [
    ['Patient', ['age', 'gender', 'race', 'weight', 'payer_code']],
    ['This admission', ['admission_type_id', 'admission_source_id', 'discharge_disposition_id', 'medical_specialty', 'time_in_hospital']],
    ['During the stay', ['num_lab_procedures', 'num_procedures', 'num_medications', 'number_diagnoses']],
    ['Diagnoses (ICD-9)', ['diag_1', 'diag_2', 'diag_3']],
    ['Visits in the year before', ['number_outpatient', 'number_emergency', 'number_inpatient']],
    ['Lab results', ['max_glu_serum', 'A1Cresult']],
    ['Diabetes medication', ['diabetesMed', 'change', 'insulin']],
  ];
  const IDENTIFIERS = ['patient_nbr', 'encounter_id'];
  const SKIP = new Set(['readmitted']);
  let schema = null; // {props, required, example, maxBatch}
  const fields = new Map(); // name -> {control, kind, error, label, hintId}

  function plain(prop) { return prop.anyOf ? prop.anyOf.find((s) => s.type !== 'null') : prop; }

  function control(name, prop) {
    const s = plain(prop);
    const id = 'f-' + name;
    if (s.enum) {
      const select = el('select', { id, name });
      if (prop.anyOf && !s.enum.includes('?')) select.append(el('option', { value: '', text: '(not recorded)' }));
      for (const v of s.enum) {
        const label = s['x-labels'] ? `${v} · ${s['x-labels'][String(v)]}` : v === '?' ? '? (unknown)' : String(v);
        select.append(el('option', { value: String(v), text: label }));
      }
      return { node: select, kind: s.type === 'integer' ? 'int' : 'text', hint: null };
    }
    if (s.type === 'integer') {
      const input = el('input', { id, name, type: 'number', inputmode: 'numeric', step: 1, min: s.minimum, max: s.maximum });
      const hint = s.maximum !== undefined && s.maximum < 1e9 ? `${s.minimum}–${s.maximum}` : 'optional';
      return { node: input, kind: 'int', hint };
    }
    const input = el('input', { id, name, type: 'text', autocomplete: 'off', spellcheck: 'false' });
    return { node: input, kind: 'text', hint: s.pattern ? "ICD-9 code, e.g. 428, 250.02, V45; ? if unknown" : null };
  }

  function field(name) {
    const prop = schema.props[name];
    const required = schema.required.has(name);
    const { node, kind, hint } = control(name, prop);
    const hintId = hint ? 'hint-' + name : null;
    const errId = 'err-' + name;
    const drug = /^[\w-]+: prescribed and dose change$/.test(prop.description || '');
    const labelText = drug ? `${name} (dose)` : prop.description || name;
    const label = el('label', { for: node.id }, labelText, required ? el('span', { 'aria-hidden': 'true', text: ' *' }) : null,
      drug ? null : ' ', drug ? null : el('span', { class: 'name', text: name }));
    if (required) node.setAttribute('aria-required', 'true');
    if (hintId) node.setAttribute('aria-describedby', hintId);
    const error = el('p', { class: 'field-error', id: errId, hidden: true });
    fields.set(name, { control: node, kind, error, errId, hintId, label: labelText });
    return el('div', { class: 'field' }, label, hintId ? el('p', { class: 'hint', id: hintId, text: hint }) : null, node, error);
  }

  function fieldset(legend, names, extraClass) {
    const box = el('div', { class: 'grid' }, ...names.map(field));
    return el('fieldset', { class: extraClass }, el('legend', { text: legend }), box);
  }

  function buildForm() {
    const placed = new Set([...GROUPS.flatMap(([, n]) => n), ...IDENTIFIERS, ...SKIP]);
    const names = Object.keys(schema.props);
    const meds = names.filter((n) => !placed.has(n) && (plain(schema.props[n]).enum || []).join() === 'No,Steady,Up,Down');
    const other = names.filter((n) => !placed.has(n) && !meds.includes(n));
    const parts = GROUPS.map(([legend, list]) => fieldset(legend, list.filter((n) => n in schema.props)));
    const medsBox = el('details', { class: 'meds', id: 'meds' },
      el('summary', { text: `Other diabetes drugs (${meds.length}): No = not prescribed` }), fieldset('Other diabetes drugs', meds));
    parts.push(medsBox);
    if (other.length) parts.push(fieldset('Other', other));
    parts.push(fieldset('Identifiers (optional: let the service use this patient\u2019s earlier encounters)', IDENTIFIERS.filter((n) => n in schema.props)));
    $('fields').replaceChildren(...parts);
    fillExample();
  }

  function fillExample() {
    clearErrors();
    for (const [name, f] of fields) {
      const prop = schema.props[name];
      const v = name in schema.example ? schema.example[name] : prop.default;
      f.control.value = v === null || v === undefined ? (f.control.tagName === 'SELECT' && plain(prop).enum.includes('?') ? '?' : '') : String(v);
    }
  }

  function encounterFromForm() {
    const out = {};
    for (const [name, f] of fields) {
      const v = f.control.value.trim();
      if (v === '') continue;
      out[name] = f.kind === 'int' && /^-?\d+$/.test(v) ? Number(v) : v;
    }
    return out;
  }

  function clearErrors() {
    for (const f of fields.values()) {
      f.control.removeAttribute('aria-invalid');
      if (f.hintId) f.control.setAttribute('aria-describedby', f.hintId); else f.control.removeAttribute('aria-describedby');
      f.error.hidden = true;
      f.error.textContent = '';
    }
    $('error-summary').hidden = true;
    $('error-summary').replaceChildren();
  }

  /** Put each API detail next to its field (aria-invalid, aria-describedby) and list them all in a summary. */
  function showErrors(res) {
    clearErrors();
    const b = res.body || {};
    const items = [];
    for (const d of b.details || []) {
      const f = fields.get(d.field);
      if (f) {
        f.control.setAttribute('aria-invalid', 'true');
        f.control.setAttribute('aria-describedby', [f.hintId, f.errId].filter(Boolean).join(' '));
        f.error.textContent = d.message;
        f.error.hidden = false;
        if (f.control.closest('#meds')) $('meds').open = true;
        items.push(el('li', {}, el('a', { href: '#' + f.control.id, text: `${f.label}: ${d.message}` })));
      } else {
        items.push(el('li', { text: `${d.field}: ${d.message}` }));
      }
    }
    if (!items.length) items.push(el('li', { text: problem(res) }));
    const summary = $('error-summary');
    const title = items.length === 1 ? 'One thing to fix' : `${items.length} things to fix`;
    summary.replaceChildren(el('h2', { text: `${title} (${b.error || 'the request failed'})` }), el('ul', {}, ...items));
    summary.hidden = false;
    summary.focus();
  }

  // ---- one encounter: risk, tier, factors ------------------------------------------------------------------------
  let lastEncounter = null;
  const TIER_TEXT = { high: 'High', medium: 'Medium', low: 'Low' };

  function factorTable(factors) {
    const max = Math.max(...factors.map((f) => Math.abs(f.contribution)), 1e-9);
    const rows = factors.map((f) => {
      const raises = f.contribution > 0;
      const bar = el('div', { class: 'bar ' + (raises ? 'raises' : 'lowers') });
      bar.style.width = (50 * Math.abs(f.contribution) / max).toFixed(1) + '%';
      return el('tr', {},
        el('th', { scope: 'row' }, f.label, el('div', { class: 'meta', text: `value: ${f.value}` })),
        el('td', { class: 'bar-cell' }, el('div', { class: 'track', 'aria-hidden': 'true' }, bar)),
        el('td', { class: raises ? 'dir-raises' : 'dir-lowers', text: `${raises ? '▲ raises' : '▼ lowers'} ${f.contribution > 0 ? '+' : ''}${f.contribution.toFixed(3)}` }));
    });
    return el('table', { class: 'factors', id: 'factors' },
      el('caption', { text: 'Top factors for this patient' }),
      el('thead', {}, el('tr', {}, el('th', { scope: 'col', text: 'Factor' }), el('th', { scope: 'col', text: 'Effect' }),
        el('th', { scope: 'col', text: 'Direction, log-odds' }))),
      el('tbody', {}, ...rows));
  }

  function showPrediction(p) {
    const tier = el('span', { class: 'tier tier-' + p.risk_tier, id: 'risk-tier', text: `${TIER_TEXT[p.risk_tier]} risk` });
    const out = [
      el('div', { class: 'risk' }, el('span', { class: 'number', id: 'risk-value', text: pct(p.risk) }), tier),
      el('p', { text: `Estimated chance of readmission within 30 days. The high tier starts at ${pct(p.threshold)}.` }),
    ];
    if (p.top_factors && p.top_factors.length) {
      out.push(factorTable(p.top_factors));
      out.push(el('p', { class: 'legend', text: '▲ orange bars push the risk up, ▼ blue bars push it down (SHAP contributions of the model, in log-odds).' }));
    }
    if (p.history_encounters) out.push(el('p', { class: 'hint', text: `${p.history_encounters} earlier encounter(s) of this patient were used.` }));
    out.push(el('p', { class: 'meta', text: `model ${p.model_version} · request ${p.request_id}` }));
    $('result-out').replaceChildren(...out);
  }

  $('encounter-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    if (!schema) return;
    const encounter = encounterFromForm();
    $('result-out').replaceChildren(el('p', { text: 'Estimating…' }));
    const res = await call('predict', { method: 'POST', body: encounter });
    if (res.status === 200) {
      clearErrors();
      showPrediction(res.body);
      lastEncounter = encounter;
      for (const b of document.querySelectorAll('#similar-form button, #chat-form button')) b.disabled = false;
      $('chat-out').replaceChildren();
      findSimilar();
    } else {
      lastEncounter = null;
      for (const b of document.querySelectorAll('#similar-form button, #chat-form button')) b.disabled = true;
      $('similar-out').replaceChildren(el('p', { class: 'hint', text: 'Estimate a risk first.' }));
      $('chat-out').replaceChildren();
      $('result-out').replaceChildren(el('p', { class: denied(res) ? 'notice' : 'error', id: 'result-error', text: `No risk: ${problem(res)}` }));
      if (denied(res)) clearErrors(); else showErrors(res); // nothing in the form to fix
    }
  });
  $('reset-example').addEventListener('click', fillExample);

  // ---- similar patients (POST /similar-patients) -----------------------------------------------------------------
  const OUTCOME = { '<30': 'readmitted within 30 days', '>30': 'readmitted after 30 days', NO: 'not readmitted' };

  async function findSimilar() {
    if (!lastEncounter) return;
    const k = Math.min(20, Math.max(1, parseInt($('similar-k').value, 10) || 5));
    const out = $('similar-out');
    out.replaceChildren(el('p', { text: 'Searching…' }));
    const res = await call('similar-patients', { method: 'POST', body: { encounter: lastEncounter, k, filters: { same_age_band: $('same-age').checked } } });
    if (res.status !== 200) {
      const why = res.status === 503 && res.body && res.body.details && res.body.details.length ? `: ${res.body.details[0].message}` : '.';
      out.replaceChildren(el('p', { class: unavailable(res) ? 'notice' : 'error', id: unavailable(res) ? 'similar-unavailable' : 'similar-error',
        text: unavailable(res) ? `Similar-patient search is not available on this server${why}` : `Search failed: ${problem(res)}` }));
      return;
    }
    const b = res.body;
    const rows = b.neighbours.map((n) => el('tr', {},
      el('td', { class: 'num', text: n.similarity.toFixed(3) }),
      el('td', { text: n.age }),
      el('td', { text: OUTCOME[n.outcome] || n.outcome }),
      el('td', { text: Object.entries(n.features || {}).slice(0, 6).map(([k2, v]) => `${k2}: ${v}`).join('; ') })));
    out.replaceChildren(
      el('p', { id: 'similar-summary', text: `${b.count} similar past patient(s); ${pct(b.readmission_rate, 0)} of them were readmitted within 30 days.` }),
      el('div', { class: 'table-wrap' }, el('table', { id: 'similar-table' },
        el('caption', { text: 'Most similar first' }),
        el('thead', {}, el('tr', {}, ...['Similarity', 'Age', 'Outcome', 'Key features'].map((h) => el('th', { scope: 'col', text: h })))),
        el('tbody', {}, ...rows))));
  }
  $('similar-form').addEventListener('submit', (e) => { e.preventDefault(); findSimilar(); });

  // ---- "why?" (POST /chat) -----------------------------------------------------------------------------------------
  $('chat-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    if (!lastEncounter) return;
    const out = $('chat-out');
    out.replaceChildren(el('p', { text: 'Thinking…' }));
    const res = await call('chat', { method: 'POST', body: { encounter: lastEncounter, question: $('question').value.trim() } });
    if (res.status !== 200) {
      out.replaceChildren(el('p', { class: unavailable(res) ? 'notice' : 'error', id: unavailable(res) ? 'chat-unavailable' : 'chat-error',
        text: unavailable(res) ? 'Explanations ("why?") are not available on this server.' : `The question failed: ${problem(res)}` }));
      return;
    }
    const b = res.body;
    const source = b.source === 'bedrock' ? 'Answer from the language model (Amazon Bedrock)'
      : `Answer from the template${b.fallback_reason ? ` (language model not used: ${b.fallback_reason})` : ''}`;
    const facts = [];
    if (typeof b.risk === 'number') facts.push(`risk ${pct(b.risk)} (${b.risk_tier})`);
    if (b.similar && typeof b.similar.count === 'number') facts.push(`${b.similar.count} similar patients, ${pct(b.similar.readmission_rate || 0, 0)} readmitted`);
    out.replaceChildren(
      el('p', {}, el('span', { class: 'source', id: 'chat-source', 'data-source': b.source, text: source })),
      el('p', { class: 'answer', id: 'chat-answer', text: b.answer }),
      facts.length ? el('p', { class: 'meta', text: 'Based on ' + facts.join('; ') }) : null);
  });

  // ---- batch: CSV → /predict/batch in chunks → sorted table, capacity view, scored CSV download -----------------
  /** RFC 4180 CSV: quoted fields, doubled quotes, CRLF or LF. */
  function parseCsv(text) {
    const rows = [];
    let row = [], cell = '', quoted = false;
    for (let i = 0; i < text.length; i++) {
      const c = text[i];
      if (quoted) {
        if (c === '"' && text[i + 1] === '"') { cell += '"'; i++; } else if (c === '"') quoted = false; else cell += c;
      } else if (c === '"') quoted = true;
      else if (c === ',') { row.push(cell); cell = ''; }
      else if (c === '\n' || c === '\r') {
        if (c === '\r' && text[i + 1] === '\n') i++;
        row.push(cell); cell = '';
        if (row.length > 1 || row[0] !== '') rows.push(row);
        row = [];
      } else cell += c;
    }
    if (cell !== '' || row.length) { row.push(cell); rows.push(row); }
    return rows;
  }
  const csvCell = (v) => (/[",\n\r]/.test(String(v)) ? `"${String(v).replace(/"/g, '""')}"` : String(v));

  let batch = null; // {name, rows: [{line, encounter_id, risk, tier, status, reason, label}], version, capacity}

  async function scoreFile(file) {
    const status = $('batch-status');
    const text = await file.text();
    const table = parseCsv(text);
    if (table.length < 2) { status.textContent = 'The file has no data rows.'; return; }
    const header = table[0].map((h) => h.trim());
    const missing = [...schema.required].filter((c) => !header.includes(c));
    if (missing.length) { status.textContent = `The file is not in the UCI format: missing column(s) ${missing.join(', ')}.`; return; }
    let data = table.slice(1);
    const capped = data.length > MAX_FILE_ROWS;
    if (capped) data = data.slice(0, MAX_FILE_ROWS);
    const known = header.map((h) => h in schema.props && !SKIP.has(h));
    const labelAt = header.indexOf('readmitted');
    const rows = data.map((cells, i) => ({ line: i + 2, encounter_id: cells[header.indexOf('encounter_id')] || '', label: labelAt >= 0 ? cells[labelAt] : null }));
    const encounters = data.map((cells) => {
      const e = {};
      header.forEach((h, j) => { if (known[j] && cells[j] !== undefined) e[h] = cells[j]; });
      return e;
    });
    let version = '';
    for (let start = 0; start < encounters.length; start += schema.maxBatch) {
      status.textContent = `Scoring… ${num(start)} of ${num(encounters.length)} encounters sent.`;
      const res = await call('predict/batch?explain=false', { method: 'POST', body: { encounters: encounters.slice(start, start + schema.maxBatch) } });
      if (res.status !== 200) { status.textContent = `Scoring stopped at row ${num(start + 2)}: ${problem(res)}`; return; }
      version = res.body.model_version;
      for (const r of res.body.results) {
        const row = rows[start + r.index];
        if (r.prediction) Object.assign(row, { risk: r.prediction.risk, tier: r.prediction.risk_tier, status: 'scored', reason: '' });
        else {
          const reason = (r.details || []).map((d) => `${d.field.replace(/^encounters\[\d+\]\./, '')}: ${d.message}`).join('; ');
          Object.assign(row, { risk: null, tier: '', status: r.error === 'outside the cohort' ? 'excluded' : 'invalid', reason });
        }
      }
    }
    const model = await call('model');
    batch = { name: file.name, rows, version, capacity: model.status === 200 ? model.body.capacity : null };
    const counts = { scored: 0, excluded: 0, invalid: 0 };
    for (const r of rows) counts[r.status]++;
    status.textContent = `Scored ${num(counts.scored)} of ${num(rows.length)} rows with model ${version}` +
      `${counts.excluded ? `; ${num(counts.excluded)} outside the cohort` : ''}${counts.invalid ? `; ${num(counts.invalid)} invalid` : ''}` +
      (capped ? `. Only the first ${num(MAX_FILE_ROWS)} rows were scored.` : '.');
    $('batch-out').hidden = false;
    renderBatch();
  }

  function topQ() { return Math.min(100, Math.max(1, parseInt($('top-q').value, 10) || 20)); }

  function renderBatch() {
    if (!batch) return;
    const q = topQ();
    const scored = batch.rows.filter((r) => r.status === 'scored').sort((a, b) => b.risk - a.risk);
    const flagged = Math.ceil(q / 100 * scored.length);
    const flaggedSet = new Set(scored.slice(0, flagged));
    const lines = [];
    if (scored.length) {
      lines.push(el('p', { id: 'capacity-file', text: `Flag the top ${q}%: ${num(flagged)} of the ${num(scored.length)} scored encounters in this file` +
        (flagged ? ` (risk ≥ ${pct(scored[flagged - 1].risk)}).` : '.') }));
    }
    const point = batch.capacity && batch.capacity.points.find((p) => p.q === q);
    if (point && point.capture !== null) {
      const where = batch.capacity.evaluation === 'holdout' ? 'the model card\u2019s holdout' : 'cross-validation';
      lines.push(el('p', { id: 'capacity-holdout', text: `On ${where} (${num(batch.capacity.n)} encounters), flagging the top ${q}% caught ` +
        `${pct(point.capture)} of the readmissions within 30 days; ${pct(point.precision)} of those flagged were readmitted.` }));
    } else {
      lines.push(el('p', { class: 'notice', text: 'This model has no holdout capacity figures (trained before they were recorded).' }));
    }
    const labelled = scored.filter((r) => ['<30', '>30', 'NO'].includes(r.label));
    const positives = labelled.filter((r) => r.label === '<30');
    if (positives.length) {
      const caught = positives.filter((r) => flaggedSet.has(r)).length;
      lines.push(el('p', { id: 'capacity-labels', text: `This file has outcomes: ${num(caught)} of its ${num(positives.length)} readmissions within 30 days are among the flagged (${pct(caught / positives.length)}).` }));
    }
    $('capacity-out').replaceChildren(...lines);

    const ordered = [...scored, ...batch.rows.filter((r) => r.status !== 'scored')];
    const shown = ordered.slice(0, TABLE_ROWS);
    const body = shown.map((r, i) => el('tr', { class: flaggedSet.has(r) ? 'flagged' : null },
      el('td', { class: 'num', text: r.status === 'scored' ? String(i + 1) : '' }),
      el('td', { text: r.encounter_id }),
      el('td', { class: 'num', text: r.risk === null ? '' : pct(r.risk) }),
      el('td', { text: r.tier }),
      el('td', { text: flaggedSet.has(r) ? 'yes' : '' }),
      el('td', { text: r.status + (r.reason ? `: ${r.reason}` : '') })));
    const caption = `Encounters by risk, highest first` + (ordered.length > shown.length ? ` (the first ${num(TABLE_ROWS)} of ${num(ordered.length)}; the download has all)` : '');
    $('batch-table').replaceChildren(el('table', { id: 'scored-table' }, el('caption', { text: caption }),
      el('thead', {}, el('tr', {}, ...[['Rank', 'num'], ['encounter_id'], ['Risk', 'num'], ['Tier'], [`Top ${q}%`], ['Status']]
        .map(([h, c]) => el('th', { scope: 'col', class: c, text: h })))),
      el('tbody', {}, ...body)));
  }

  /** The scored file, one row per input row in input order: the columns of `readmit predict`. */
  function scoredCsv() {
    const lines = ['encounter_id,risk,risk_tier,status,reason,model_version'];
    for (const r of batch.rows) {
      lines.push([r.encounter_id, r.risk === null ? '' : r.risk.toFixed(6), r.tier, r.status, r.reason, batch.version].map(csvCell).join(','));
    }
    return lines.join('\n') + '\n';
  }

  $('batch-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const file = $('csv-file').files[0];
    if (!file) { $('batch-status').textContent = 'Choose a CSV file first.'; $('csv-file').focus(); return; }
    if (!schema) return;
    $('batch-out').hidden = true;
    await scoreFile(file);
  });
  $('top-q').addEventListener('input', renderBatch);
  $('download').addEventListener('click', () => {
    if (!batch) return;
    const url = URL.createObjectURL(new Blob([scoredCsv()], { type: 'text/csv' }));
    const a = el('a', { href: url, download: 'scored-' + batch.name.replace(/\.csv$/i, '') + '.csv' });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  });

  // ---- model: version, metrics, model card with its plots ----------------------------------------------------------
  let modelLoaded = false;
  async function loadModel() {
    if (modelLoaded) return;
    const out = $('model-out');
    const [info, cardRes, shadowRes] = await Promise.all([call('model'), call('model/card'), call('model/shadow')]);
    if (info.status !== 200) {
      out.replaceChildren(el('p', { class: denied(info) ? 'notice' : 'error', id: 'model-error', text: `The model information is not shown: ${problem(info)}.` }));
      return;
    }
    modelLoaded = true;
    const m = info.body;
    const s = m.metrics;
    const metric = (label, value) => el('div', { class: 'metric' }, el('span', { class: 'value', text: value }), label);
    const parts = [
      el('h2', { text: 'Champion model' }),
      el('p', {}, 'Version ', el('strong', { id: 'model-version', text: m.version }), `, trained ${m.trained_at}, calibration ${m.calibration}.`),
      el('div', { class: 'metrics', role: 'list', 'aria-label': `Metrics on the ${m.evaluation} set` },
        ...[['ROC-AUC', s.roc_auc.toFixed(3)], ['PR-AUC', s.pr_auc.toFixed(3)], ['Brier', s.brier.toFixed(4)], ['ECE', s.ece.toFixed(4)],
          ['Precision (high tier)', pct(s.precision)], ['Recall (high tier)', pct(s.recall)], ['Encounters evaluated', num(s.n)]]
          .map(([l, v]) => { const d = metric(l, v); d.setAttribute('role', 'listitem'); return d; })),
    ];
    parts.push(shadowSection(shadowRes));
    const card = el('div', { class: 'model-card', id: 'model-card' });
    if (cardRes.status === 200) card.innerHTML = cardRes.body.html; // server-rendered from the bundle's card; every text escaped there
    else card.append(el('p', { class: 'notice', text: `The model card is not available: ${problem(cardRes)}` }));
    parts.push(card);
    out.replaceChildren(...parts);
    for (const img of card.querySelectorAll('img[data-plot]')) {
      const res = await call('model/plots/' + encodeURIComponent(img.dataset.plot), { accept: 'image/png' });
      if (res.status === 200) img.src = URL.createObjectURL(res.body);
      else img.replaceWith(el('span', { class: 'notice', text: `${img.alt}: not available` }));
    }
  }
  onShow['tab-model'] = loadModel;

  /** The shadow model against the champion on the same requests (GET /model/shadow), as one compact table. */
  function shadowSection(res) {
    const box = el('section', { id: 'shadow', 'aria-labelledby': 'shadow-title' }, el('h2', { id: 'shadow-title', text: 'Shadow model' }));
    if (res.status !== 200) {
      box.append(el('p', { class: 'notice', id: 'shadow-none', text: unavailable(res) && !denied(res) ? 'No shadow report from this deployment.' : `The shadow report is not shown: ${problem(res)}.` }));
      return box;
    }
    const r = res.body;
    if (!r.shadow_version) {
      box.append(el('p', { id: 'shadow-none', text: 'No shadow model: only the champion scores requests.' }));
      return box;
    }
    const fixed = (x, d = 3) => (x === null || x === undefined ? '–' : x.toFixed(d));
    const signed = (x) => (x === null || x === undefined ? '–' : (x >= 0 ? '+' : '') + (100 * x).toFixed(1) + ' pts');
    box.append(el('p', {}, 'Version ', el('strong', { id: 'shadow-version', text: r.shadow_version }),
      ` scores each request beside champion ${r.champion_version || '–'} since ${r.window[0] || 'the start of the log'}; answers come from the champion only.`));
    const h = r.high_risk, shift = r.risk_shift, real = r.realized || {};
    const both = (key) => [real.champion ? fixed(real.champion[key], key === 'ece' ? 4 : 3) : '–', real.shadow ? fixed(real.shadow[key], key === 'ece' ? 4 : 3) : '–'];
    const rows = [
      ['Requests compared', num(r.requests_compared), `${num(r.encounters_compared)} encounters`],
      ['Risk tier agreement', r.tier_agreement === null ? '–' : pct(r.tier_agreement), ''],
      ['High-risk list: champion / shadow', h ? `${num(h.champion)} / ${num(h.shadow)}` : '–', h ? `${num(h.entering)} would join, ${num(h.leaving)} would leave; churn (Jaccard distance) ${h.jaccard_distance === null ? '–' : pct(h.jaccard_distance)}` : ''],
      ['Mean risk shift (shadow − champion)', shift ? signed(shift.mean) : '–', shift ? `SD ${signed(shift.sd)}, 5th–95th percentile ${signed(shift.p05)} to ${signed(shift.p95)}` : ''],
      ['Realized ROC-AUC: champion / shadow', both('roc_auc').join(' / '), real.labelled ? `${num(real.labelled)} matured, labelled encounters` : (real.note || '')],
      ['Realized ECE: champion / shadow', both('ece').join(' / '), ''],
    ];
    box.append(el('div', { class: 'table-wrap' }, el('table', { id: 'shadow-table' },
      el('caption', { class: 'visually-hidden', text: 'Shadow model compared with the champion' }),
      el('thead', {}, el('tr', {}, el('th', { scope: 'col', text: 'Measure' }), el('th', { scope: 'col', class: 'num', text: 'Value' }), el('th', { scope: 'col', text: 'Detail' }))),
      el('tbody', {}, ...rows.map(([k, v, d]) => el('tr', {}, el('th', { scope: 'row', text: k }), el('td', { class: 'num', text: v }), el('td', { text: d })))))));
    if (r.tier_table) {
      const t = r.tier_table;
      box.append(el('div', { class: 'table-wrap' }, el('table', { id: 'shadow-tiers' },
        el('caption', { text: 'Risk tiers: champion (rows) by shadow (columns)' }),
        el('thead', {}, el('tr', {}, el('td', {}), ...t.tiers.map((x) => el('th', { scope: 'col', class: 'num', text: `shadow ${x}` })))),
        el('tbody', {}, ...t.counts.map((row, i) => el('tr', {}, el('th', { scope: 'row', text: `champion ${t.tiers[i]}` }), ...row.map((n) => el('td', { class: 'num', text: num(n) }))))))));
    }
    box.append(el('p', { class: 'meta', text: r.note }));
    return box;
  }

  // ---- start --------------------------------------------------------------------------------------------------------
  async function start() {
    await finishSignIn();
    renderAuth();
    loadStatus();
    const res = await call('openapi.json');
    if (res.status !== 200) { $('fields').replaceChildren(el('p', { class: 'error', text: `The API schema could not be loaded: ${problem(res)}` })); return; }
    const doc = res.body;
    const enc = doc.components.schemas.Encounter;
    const predictBody = doc.paths['/predict'].post.requestBody.content['application/json'];
    const batchSchema = doc.components.schemas.BatchRequest;
    schema = {
      props: enc.properties,
      required: new Set(enc.required || []),
      example: predictBody.example || {},
      maxBatch: (batchSchema && batchSchema.properties.encounters.maxItems) || 500,
    };
    buildForm();
    document.body.dataset.ready = 'true';
  }
  start();
})();
