// Passkey ceremonies for sessiond's pages (docs/reference/second-factor.md, "Passkeys"): the
// pages' only script, served from /static/passkeys.js (the CSP allows scripts from 'self'
// alone). A button with data-passkey="register" | "second" | "login" runs one ceremony over
// the JSON API, then goes to its data-next (written by the server, already checked).
'use strict';
(function () {
  async function post(path, body) {
    const r = await fetch(path, {
      method: 'POST',
      credentials: 'same-origin',
      headers: {'content-type': 'application/json'},
      body: JSON.stringify(body || {}),
    });
    let data = null;
    try { data = await r.json(); } catch (e) { /* an empty answer */ }
    if (!r.ok) throw new Error((data && data.message) || ('HTTP ' + r.status));
    return data;
  }

  function show(button, message) {
    const out = document.getElementById('passkey-error');
    if (out) { out.textContent = message; out.hidden = !message; }
  }

  async function run(button) {
    if (!window.PublicKeyCredential || !PublicKeyCredential.parseCreationOptionsFromJSON) {
      throw new Error('This browser cannot use passkeys here.');
    }
    const kind = button.dataset.passkey;
    if (kind === 'register') {
      const c = await post('/api/2fa/passkeys/register/start');
      const options = PublicKeyCredential.parseCreationOptionsFromJSON(c.options.publicKey);
      const cred = await navigator.credentials.create({publicKey: options});
      const name = document.getElementById('passkey-name');
      await post('/api/2fa/passkeys/register/finish',
        {ceremony: c.ceremony, name: name ? name.value : '', credential: cred.toJSON()});
    } else {
      const login = kind === 'login';
      const c = await post(login ? '/api/login/passkey/start' : '/api/2fa/passkey/start');
      const options = PublicKeyCredential.parseRequestOptionsFromJSON(c.options.publicKey);
      const cred = await navigator.credentials.get({publicKey: options});
      const body = {ceremony: c.ceremony, credential: cred.toJSON()};
      if (login) {
        const remember = document.getElementById('remember');
        body.remember = !!(remember && remember.checked);
      }
      await post(login ? '/api/login/passkey' : '/api/2fa/passkey', body);
    }
    window.location.assign(button.dataset.next || '/');
  }

  document.addEventListener('click', function (ev) {
    const button = ev.target.closest('[data-passkey]');
    if (!button) return;
    ev.preventDefault();
    button.disabled = true;
    show(button, '');
    run(button)
      .catch(function (e) { show(button, e.message || String(e)); })
      .finally(function () { button.disabled = false; });
  });
})();
