// look's gallery: uploads, endless scrolling, placeholders, a viewer, copying, describing and
// deleting, added to pages that work without any of it. Everything goes through the JSON API;
// errors are shown in the words of its "description".

const KEY_ITEM = 'look:api-key';
const TOKENS_ITEM = 'look:delete-tokens';
const DELETED_ITEM = 'look:deleted'; // ids deleted in this browser, for a gallery shown again
const MOST_DELETED_KEPT = 200;
const PARALLEL_UPLOADS = 3;
const MAX_RETRY_WAIT = 30; // seconds: a Retry-After longer than this is not waited out
const MONTHS = [
  'January', 'February', 'March', 'April', 'May', 'June',
  'July', 'August', 'September', 'October', 'November', 'December',
];

// -- what this browser keeps --------------------------------------------------------
// localStorage may be turned off or full: then nothing is kept, and nothing breaks.

function readItem(name) {
  try {
    return localStorage.getItem(name);
  } catch {
    return null;
  }
}

function writeItem(name, value) {
  try {
    if (value === null) localStorage.removeItem(name);
    else localStorage.setItem(name, value);
  } catch {
    // kept for this page only
  }
}

function apiKey() {
  return readItem(KEY_ITEM) || '';
}

function deleteTokens() {
  try {
    const tokens = JSON.parse(readItem(TOKENS_ITEM) || '{}');
    return tokens && typeof tokens === 'object' ? tokens : {};
  } catch {
    return {};
  }
}

function keepDeleteToken(id, token) {
  writeItem(TOKENS_ITEM, JSON.stringify({ ...deleteTokens(), [id]: token }));
}

function forgetDeleteToken(id) {
  const tokens = deleteTokens();
  delete tokens[id];
  writeItem(TOKENS_ITEM, JSON.stringify(tokens));
}

function deletedIds() {
  try {
    const ids = JSON.parse(readItem(DELETED_ITEM) || '[]');
    return Array.isArray(ids) ? ids : [];
  } catch {
    return [];
  }
}

function rememberDeleted(id) {
  writeItem(DELETED_ITEM, JSON.stringify([...deletedIds(), id].slice(-MOST_DELETED_KEPT)));
}

function authorization(credential) {
  return credential ? { Authorization: `Bearer ${credential}` } : {};
}

const keysRequired = document.body.dataset.keysRequired === 'true';

// -- errors, in words -----------------------------------------------------------------

function descriptionOf(text, status) {
  try {
    const body = JSON.parse(text);
    if (body && typeof body.description === 'string' && body.description) {
      return body.description;
    }
  } catch {
    // not the API's JSON: a proxy's page, say
  }
  return `The server answered ${status}.`;
}

function needsKey(action) {
  return apiKey()
    ? `${action} needs an API key, and the one kept in this browser is not accepted here: enter another under “API key”.`
    : `${action} needs an API key: enter one under “API key”.`;
}

function failure(status, text, action) {
  if (status === 0) return `${action} failed: the connection to the server was lost.`;
  if (status === 401) return needsKey(action);
  return descriptionOf(text, status);
}

// -- placeholders ---------------------------------------------------------------------------
// The server paints each image's colour at once (an SVG's fill: no inline style, which the
// Content-Security-Policy forbids); this paints its ThumbHash over it, into a <canvas>, which
// no policy governs. The decoder follows Evan Wallace's published ThumbHash algorithm
// (https://evanw.github.io/thumbhash/); tests/e2e compares it with his reference code.

function thumbHashToRGBA(hash) {
  const { PI, min, max, cos, round } = Math;
  const header24 = hash[0] | (hash[1] << 8) | (hash[2] << 16);
  const header16 = hash[3] | (hash[4] << 8);
  const lDc = (header24 & 63) / 63;
  const pDc = ((header24 >> 6) & 63) / 31.5 - 1;
  const qDc = ((header24 >> 12) & 63) / 31.5 - 1;
  const lScale = ((header24 >> 18) & 31) / 31;
  const hasAlpha = header24 >> 23;
  const pScale = ((header16 >> 3) & 63) / 63;
  const qScale = ((header16 >> 9) & 63) / 63;
  const isLandscape = header16 >> 15;
  const lx = max(3, isLandscape ? (hasAlpha ? 5 : 7) : header16 & 7);
  const ly = max(3, isLandscape ? header16 & 7 : hasAlpha ? 5 : 7);
  const aDc = hasAlpha ? (hash[5] & 15) / 15 : 1;
  const aScale = (hash[5] >> 4) / 15;

  // The varying factors, four bits each (saturation boosted 1.25x against quantization).
  const acStart = hasAlpha ? 6 : 5;
  let acIndex = 0;
  const decodeChannel = (nx, ny, scale) => {
    const ac = [];
    for (let cy = 0; cy < ny; cy += 1) {
      for (let cx = cy ? 0 : 1; cx * ny < nx * (ny - cy); cx += 1) {
        const nibble = (hash[acStart + (acIndex >> 1)] >> ((acIndex & 1) << 2)) & 15;
        acIndex += 1;
        ac.push((nibble / 7.5 - 1) * scale);
      }
    }
    return ac;
  };
  const lAc = decodeChannel(lx, ly, lScale);
  const pAc = decodeChannel(3, 3, pScale * 1.25);
  const qAc = decodeChannel(3, 3, qScale * 1.25);
  const aAc = hasAlpha && decodeChannel(5, 5, aScale);

  // The aspect ratio the hash approximates, and the DCT back into RGB.
  const ratio = thumbHashAspectRatio(hash);
  const w = round(ratio > 1 ? 32 : 32 * ratio);
  const h = round(ratio > 1 ? 32 / ratio : 32);
  const rgba = new Uint8ClampedArray(w * h * 4);
  const fx = [];
  const fy = [];
  for (let y = 0, i = 0; y < h; y += 1) {
    for (let x = 0; x < w; x += 1, i += 4) {
      let l = lDc;
      let p = pDc;
      let q = qDc;
      let a = aDc;
      for (let cx = 0, n = max(lx, hasAlpha ? 5 : 3); cx < n; cx += 1) {
        fx[cx] = cos((PI / w) * (x + 0.5) * cx);
      }
      for (let cy = 0, n = max(ly, hasAlpha ? 5 : 3); cy < n; cy += 1) {
        fy[cy] = cos((PI / h) * (y + 0.5) * cy);
      }
      for (let cy = 0, j = 0; cy < ly; cy += 1) {
        for (let cx = cy ? 0 : 1, fy2 = fy[cy] * 2; cx * ly < lx * (ly - cy); cx += 1, j += 1) {
          l += lAc[j] * fx[cx] * fy2;
        }
      }
      for (let cy = 0, j = 0; cy < 3; cy += 1) {
        for (let cx = cy ? 0 : 1, fy2 = fy[cy] * 2; cx < 3 - cy; cx += 1, j += 1) {
          const f = fx[cx] * fy2;
          p += pAc[j] * f;
          q += qAc[j] * f;
        }
      }
      if (hasAlpha) {
        for (let cy = 0, j = 0; cy < 5; cy += 1) {
          for (let cx = cy ? 0 : 1, fy2 = fy[cy] * 2; cx < 5 - cy; cx += 1, j += 1) {
            a += aAc[j] * fx[cx] * fy2;
          }
        }
      }
      const b = l - (2 / 3) * p;
      const r = (3 * l - b + q) / 2;
      const g = r - q;
      // NOTE: truncated, as the reference's Uint8Array stores them; a clamped array rounds.
      rgba[i] = Math.trunc(max(0, 255 * min(1, r)));
      rgba[i + 1] = Math.trunc(max(0, 255 * min(1, g)));
      rgba[i + 2] = Math.trunc(max(0, 255 * min(1, b)));
      rgba[i + 3] = Math.trunc(max(0, 255 * min(1, a)));
    }
  }
  return { w, h, rgba };
}

function thumbHashAspectRatio(hash) {
  const header = hash[3];
  const hasAlpha = hash[2] & 0x80;
  const isLandscape = hash[4] & 0x80;
  const lx = isLandscape ? (hasAlpha ? 5 : 7) : header & 7;
  const ly = isLandscape ? header & 7 : hasAlpha ? 5 : 7;
  return lx / ly;
}

function paintPlaceholders(root) {
  for (const svg of root.querySelectorAll('svg.placeholder[data-thumbhash]')) {
    const encoded = svg.dataset.thumbhash;
    if (!encoded || svg.nextElementSibling?.tagName === 'CANVAS') continue;
    let decoded;
    try {
      decoded = thumbHashToRGBA(Uint8Array.from(atob(encoded), (c) => c.charCodeAt(0)));
    } catch {
      continue; // not a ThumbHash: the colour stays
    }
    const canvas = document.createElement('canvas');
    canvas.className = 'placeholder';
    canvas.width = decoded.w;
    canvas.height = decoded.h;
    canvas.setAttribute('aria-hidden', 'true');
    canvas.getContext('2d').putImageData(new ImageData(decoded.rgba, decoded.w, decoded.h), 0, 0);
    svg.after(canvas);
  }
}

// -- an image, as gallery.py renders it -----------------------------------------------
// The gallery page carries a blank tile, rendered by the server from the template its own tiles
// come from (look/web/templates/tile.html); a tile is a clone of it with its fields filled in.
// The API's JSON has no alt text nor fallback src: those are worked out here as gallery.py does.

const tileTemplate = document.getElementById('tile-template');

function uploadedAt(httpDate) {
  const moment = new Date(httpDate);
  const pad = (n) => String(n).padStart(2, '0');
  return `${moment.getUTCDate()} ${MONTHS[moment.getUTCMonth()]} ${moment.getUTCFullYear()} `
    + `at ${pad(moment.getUTCHours())}:${pad(moment.getUTCMinutes())} UTC`;
}

function altText(description) {
  if (description.alt) return description.alt;
  const [width, height] = description.size;
  return `Image uploaded ${uploadedAt(description.modified)}, ${width} by ${height} pixels`;
}

function srcsetCandidates(srcset) {
  return srcset.split(',').map((item) => item.trim()).filter(Boolean).map((item) => {
    const space = item.lastIndexOf(' ');
    return [item.slice(0, space), parseInt(item.slice(space + 1), 10)];
  });
}

// The src of a tile, where srcset is not read: the smallest JPEG at least as wide as the
// template says (gallery.py's FALLBACK_WIDTH).
function fallbackSrc(description) {
  const fallbackWidth = Number(tileTemplate.dataset.fallbackWidth);
  const candidates = srcsetCandidates(description.formats.jpeg.srcset);
  const wideEnough = candidates.filter(([, width]) => width >= fallbackWidth);
  if (wideEnough.length) return wideEnough[wideEnough.length - 1][0];
  return candidates.length ? candidates[0][0] : description.image;
}

function tile(description, sizes) {
  // NOTE: a clone of a template's content belongs to the template's inert document, which
  //   fetches nothing: no URL is loaded before the tile, filled in, is added to the page.
  const item = tileTemplate.content.cloneNode(true).firstElementChild;
  item.querySelector('a').href = `/view/${description.id}`;
  const [width, height] = description.size;
  // A small image's original is the last candidate of every source, as in gallery.py.
  const original = `${description.image} ${width}w`;
  const offerOriginal = width <= Number(tileTemplate.dataset.originalMaxWidth);
  const withOriginal = (srcset) => {
    if (!offerOriginal) return srcset;
    return srcset ? `${srcset}, ${original}` : original;
  };
  const svg = item.querySelector('svg.placeholder');
  if (description.placeholder) {
    svg.setAttribute('viewBox', `0 0 ${width} ${height}`);
    svg.dataset.thumbhash = description.placeholder.thumbhash;
    const rect = svg.querySelector('rect');
    rect.setAttribute('width', width);
    rect.setAttribute('height', height);
    rect.setAttribute('fill', description.placeholder.color);
  } else {
    svg.remove();
  }
  const animation = item.querySelector('source.animation');
  if (description.animation) animation.srcset = description.animation.url;
  else animation.remove();
  const formats = Object.values(description.formats);
  // A source per format but JPEG; one the image has no thumbnails in is left out, as the
  // server leaves it out.
  for (const source of item.querySelectorAll('source:not(.animation)')) {
    const rendered = formats.find((format) => format.type === source.type);
    if (rendered?.srcset) {
      source.srcset = withOriginal(rendered.srcset);
      source.sizes = sizes;
    } else {
      source.remove();
    }
  }
  const img = item.querySelector('img');
  const jpeg = withOriginal(description.formats.jpeg.srcset);
  if (jpeg) {
    img.srcset = jpeg;
    img.sizes = sizes;
  } else {
    img.removeAttribute('srcset');
    img.removeAttribute('sizes');
  }
  img.width = width;
  img.height = height;
  img.alt = altText(description);
  img.src = fallbackSrc(description);
  paintPlaceholders(item);
  return item;
}

// -- the API key --------------------------------------------------------------------

function setUpKeyForm(onChange) {
  const form = document.getElementById('key-form');
  if (!form) return;
  const input = document.getElementById('key');
  const status = document.getElementById('key-status');
  const forget = document.getElementById('forget-key');
  const show = () => {
    const kept = Boolean(apiKey());
    forget.hidden = !kept;
    status.textContent = kept ? 'A key is kept in this browser.' : '';
  };
  form.hidden = false;
  show();
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const key = input.value.trim();
    if (!key) return;
    writeItem(KEY_ITEM, key);
    input.value = '';
    show();
    onChange();
  });
  forget.addEventListener('click', () => {
    writeItem(KEY_ITEM, null);
    show();
    input.focus();
    onChange();
  });
}

// -- the list, page after page --------------------------------------------------------
// Where the list was (how many tiles, the cursor after them, the scroll position) is kept in
// this history entry's state: Back to the gallery lists as far again and scrolls back there,
// without the images deleted meanwhile.

function nextLink(header) {
  const match = /<([^>]*)>\s*;\s*rel="?next"?/.exec(header || '');
  return match ? match[1] : null;
}

const MOST_LISTED_AT_ONCE = 1000; // the API's largest page

function tileId(item) {
  return item.querySelector('a')?.getAttribute('href')?.replace('/view/', '') || '';
}

function setUpList() {
  const grid = document.getElementById('grid');
  const status = document.getElementById('list-status');
  const sizes = grid.dataset.sizes;
  let next = grid.dataset.next || null;
  let loading = false;
  let control = document.getElementById('older');
  let generation = 0;

  const observer = 'IntersectionObserver' in window
    ? new IntersectionObserver((entries) => {
      if (entries.some((entry) => entry.isIntersecting)) loadMore();
    }, { rootMargin: '0px 0px 400px 0px' })
    : null;

  function showControl() {
    if (!next) {
      control?.closest('.more')?.remove();
      control = null;
      return;
    }
    if (!control) {
      const paragraph = document.createElement('p');
      paragraph.className = 'more';
      control = document.createElement('button');
      control.type = 'button';
      control.id = 'older';
      control.className = 'quiet';
      control.textContent = 'Older images';
      paragraph.append(control);
      grid.after(paragraph);
      control.addEventListener('click', loadMore);
    }
    // NOTE: observing again reports the control at once if it is still in
    //   view, as on a tall screen: the next page is loaded without a scroll.
    observer?.unobserve(control);
    observer?.observe(control);
  }

  // Fetch the page at `next` (at most `limit` images, when given) and add its tiles.
  async function fetchPage(limit) {
    let url = next;
    if (limit) {
      const address = new URL(url, window.location.href);
      address.searchParams.set('limit', String(Math.min(limit, MOST_LISTED_AT_ONCE)));
      url = address.pathname + address.search;
    }
    const started = generation;
    let response;
    let text;
    try {
      response = await fetch(url, {
        headers: { Accept: 'application/json', ...authorization(apiKey()) },
      });
      text = await response.text();
    } catch {
      response = null;
    }
    if (started !== generation) return false; // the key changed meanwhile: this page is stale
    if (!response || !response.ok) {
      const code = response ? response.status : 0;
      status.textContent = failure(code, text, 'Listing images');
      status.classList.add('error');
      if (code === 401) document.getElementById('key')?.focus();
      return false;
    }
    status.classList.remove('error');
    const descriptions = JSON.parse(text);
    grid.append(...descriptions.map((description) => tile(description, sizes)));
    next = nextLink(response.headers.get('Link'));
    if (next && limit) {
      // The next page is of the usual size, whatever this one's was.
      const address = new URL(next, window.location.href);
      address.searchParams.set('limit', new URL(grid.dataset.first, window.location.href).searchParams.get('limit'));
      next = address.pathname + address.search;
    }
    if (control?.tagName === 'A' && descriptions.length) {
      const address = new URL(control.href);
      address.searchParams.set('after', descriptions[descriptions.length - 1].id);
      control.href = address.pathname + address.search;
    }
    status.textContent = grid.children.length ? '' : 'No images yet: upload the first one.';
    return true;
  }

  async function loadMore(event) {
    event?.preventDefault();
    if (loading || !next) return;
    loading = true;
    const started = generation;
    const ok = await fetchPage();
    if (started !== generation) return;
    loading = false;
    if (ok) showControl();
  }

  function restart() {
    generation += 1;
    loading = false;
    grid.replaceChildren();
    next = grid.dataset.first;
    status.textContent = '';
    loadMore();
  }

  // -- keeping the place --
  function keepPlace() {
    const place = { tiles: grid.children.length, scroll: Math.round(window.scrollY) };
    history.replaceState({ ...(history.state || {}), look: place }, '');
  }

  function dropDeleted() {
    const deleted = new Set(deletedIds());
    for (const item of [...grid.children]) {
      if (deleted.has(tileId(item))) item.remove();
    }
  }

  async function restorePlace(place) {
    // NOTE: the browser would scroll before the tiles are back; this page scrolls itself.
    loading = true;
    while (next && grid.children.length < place.tiles) {
      if (!(await fetchPage(place.tiles - grid.children.length))) break;
    }
    loading = false;
    showControl();
    window.scrollTo(0, place.scroll);
  }

  if ('scrollRestoration' in history) history.scrollRestoration = 'manual';
  let scrolled = 0;
  window.addEventListener('scroll', () => {
    window.clearTimeout(scrolled);
    scrolled = window.setTimeout(keepPlace, 150);
  }, { passive: true });
  window.addEventListener('pagehide', keepPlace);
  grid.addEventListener('click', (event) => {
    if (event.target.closest('a')) keepPlace();
  });
  // Shown again from the back-forward cache: as it was left, less what was deleted since.
  window.addEventListener('pageshow', (event) => {
    if (event.persisted) dropDeleted();
  });

  control?.addEventListener('click', loadMore);
  const place = history.state?.look;
  if (grid.dataset.listed === 'false') {
    if (apiKey()) {
      if (place) restorePlace(place);
      else loadMore(); // from data-next: where this address starts
    } else {
      status.textContent = 'Enter an API key above to see the images.';
    }
  } else if (place && (place.tiles > grid.children.length || place.scroll)) {
    restorePlace(place);
  } else {
    showControl();
  }

  return {
    restart,
    sizes,
    grid,
    clearStatus() {
      status.textContent = '';
    },
  };
}

// -- uploads ----------------------------------------------------------------------------
// Each file is sent on its own, three at a time, with the alt text its row asks for; the
// new tiles go to the top of the grid in the order the files were picked. When the batch
// ends, its rows fold into one line ("12 uploaded · Clear") and the new tiles are in view.

function formatBytes(count) {
  for (const [unit, size] of [['GiB', 2 ** 30], ['MiB', 2 ** 20], ['KiB', 2 ** 10]]) {
    if (count >= size) {
      const value = count / size;
      return `${Number.isInteger(value) ? value : value.toFixed(1)} ${unit}`;
    }
  }
  return `${count} bytes`;
}

function sleep(seconds) {
  return new Promise((resolve) => { setTimeout(resolve, seconds * 1000); });
}

function send(file, alt, onProgress) {
  return new Promise((resolve) => {
    const request = new XMLHttpRequest();
    request.open('POST', '/images');
    request.setRequestHeader('Accept', 'application/json');
    const key = apiKey();
    if (key) request.setRequestHeader('Authorization', `Bearer ${key}`);
    request.upload.addEventListener('progress', (event) => {
      if (event.lengthComputable) onProgress(event.loaded / event.total);
    });
    request.addEventListener('load', () => resolve({
      status: request.status,
      text: request.responseText,
      retryAfter: request.getResponseHeader('Retry-After'),
    }));
    request.addEventListener('error', () => resolve({ status: 0, text: '' }));
    request.addEventListener('abort', () => resolve({ status: 0, text: '' }));
    if (alt) {
      // NOTE: a form only when there are words to send: the bare body is
      //   the image alone, and counts against the size limit byte for byte.
      const form = new FormData();
      form.append('image', file);
      form.append('alt', alt);
      request.send(form);
    } else {
      request.setRequestHeader('Content-Type', file.type || 'application/octet-stream');
      request.send(file);
    }
  });
}

async function sendAlt(id, alt, credential) {
  let response;
  let text = '';
  try {
    response = await fetch(`/images/${id}.jpeg`, {
      method: 'PATCH',
      headers: {
        Accept: 'application/json',
        'Content-Type': 'application/json',
        ...authorization(credential),
      },
      body: JSON.stringify({ alt }),
    });
    text = await response.text();
  } catch {
    response = null;
  }
  if (response && response.ok) return { ok: true, description: JSON.parse(text) };
  return { ok: false, text: failure(response ? response.status : 0, text, 'Changing the alt text') };
}

// NOTE: progress goes to each item's <progress>; only outcomes are announced,
//   in one status line, so a screen reader is not read every percent.
function announce(text) {
  document.getElementById('upload-status').textContent = text;
}

let uploadNumber = 0;

class UploadItem {
  constructor(file, list, maxAlt) {
    uploadNumber += 1;
    this.name = file.name;
    this.description = null;
    this.sentAlt = '';
    this.element = document.createElement('li');
    this.thumbnail = document.createElement('span');
    this.thumbnail.className = 'thumb';
    const name = document.createElement('span');
    name.className = 'name';
    name.textContent = file.name;
    name.title = file.name;
    this.progress = document.createElement('progress');
    this.progress.max = 100;
    this.progress.value = 0;
    this.progress.setAttribute('aria-label', `Upload of ${file.name}`);
    this.state = document.createElement('span');
    this.state.className = 'state';
    this.state.textContent = 'Waiting…';
    const altLabel = document.createElement('label');
    altLabel.className = 'visually-hidden';
    altLabel.htmlFor = `upload-alt-${uploadNumber}`;
    altLabel.textContent = `What ${file.name} shows (alt text)`;
    this.alt = document.createElement('input');
    this.alt.type = 'text';
    this.alt.id = altLabel.htmlFor;
    this.alt.className = 'alt';
    this.alt.maxLength = maxAlt;
    this.alt.placeholder = 'What it shows (alt text)';
    this.alt.addEventListener('change', () => this.describe());
    this.element.append(this.thumbnail, name, this.progress, this.state, altLabel, this.alt);
    list.append(this.element);
  }

  say(text) {
    this.state.textContent = text;
  }

  progressed(fraction) {
    this.progress.value = Math.round(fraction * 100);
    this.say(`Uploading… ${this.progress.value}%`);
  }

  done(description) {
    this.description = description;
    this.progress.value = 100;
    this.state.replaceChildren('Uploaded: ');
    const link = document.createElement('a');
    link.href = `/view/${description.id}`;
    link.textContent = 'its page';
    this.state.append(link);
    this.state.className = 'state done';
    this.element.dataset.id = description.id;
    const img = document.createElement('img');
    const [width, height] = description.size;
    img.src = description.thumbnails[description.thumbnails.length - 1] || description.image;
    img.alt = '';
    img.width = width;
    img.height = height;
    this.thumbnail.append(img);
    announce(`Uploaded ${this.name}.`);
    if (this.alt.value.trim() !== this.sentAlt) this.describe();
  }

  async describe() {
    if (!this.description) return; // sent with the upload, when it starts
    const alt = this.alt.value.trim();
    const credential = deleteTokens()[this.description.id] || apiKey();
    const answer = await sendAlt(this.description.id, alt, credential);
    if (answer.ok) {
      this.sentAlt = alt;
      this.onDescribed?.(answer.description);
      this.say('Alt text saved.');
    } else {
      this.say(answer.text);
    }
  }

  failed(text) {
    this.progress.remove();
    this.alt.remove();
    this.element.querySelector('label')?.remove();
    this.state.textContent = text;
    this.state.className = 'state error';
    this.element.classList.add('failed');
    announce(`${this.name} was not uploaded: ${text}`);
  }
}

async function upload(file, item, maxBytes, onUploaded) {
  if (file.size > maxBytes) {
    item.failed(`The file is larger than the limit of ${formatBytes(maxBytes)}; it was not sent.`);
    return false;
  }
  for (let attempt = 1; ; attempt += 1) {
    item.progressed(0);
    item.sentAlt = item.alt.value.trim();
    const answer = await send(file, item.sentAlt, (fraction) => item.progressed(fraction));
    if (answer.status === 201) {
      const description = JSON.parse(answer.text);
      keepDeleteToken(description.id, description.delete_token);
      onUploaded(description, item);
      item.done(description);
      return true;
    }
    const wait = Number.parseInt(answer.retryAfter, 10);
    if (answer.status === 503 && attempt === 1 && wait >= 0 && wait <= MAX_RETRY_WAIT) {
      item.say(`The server is busy; trying again in ${wait} s…`);
      await sleep(wait);
      continue;
    }
    item.failed(failure(answer.status, answer.text, 'Uploading'));
    if (answer.status === 401) document.getElementById('key')?.focus();
    return false;
  }
}

function setUpUploads(list) {
  const form = document.getElementById('upload');
  const input = document.getElementById('files');
  const rows = document.getElementById('uploads');
  const batchBox = document.getElementById('batch');
  const count = document.getElementById('batch-count');
  const clear = document.getElementById('batch-clear');
  const toggle = document.getElementById('batch-toggle');
  const maxBytes = Number(form.dataset.maxBytes);
  const maxAlt = Number(form.dataset.maxAlt);
  const waiting = [];
  let running = 0;
  let batch = null;

  for (const element of form.querySelectorAll('.no-js')) element.hidden = true;
  for (const element of form.querySelectorAll('.js-only')) element.hidden = false;

  function showList(shown) {
    rows.hidden = !shown;
    toggle.textContent = shown ? 'Hide the list' : 'Show the list';
    toggle.setAttribute('aria-expanded', String(shown));
  }

  function tell() {
    const { items, uploaded, failed } = batch;
    const finished = uploaded + failed === items.length;
    const refused = failed ? ` · ${failed} not uploaded` : '';
    count.textContent = finished
      ? `${uploaded} uploaded${refused}`
      : `${uploaded} of ${items.length} uploaded${refused}`;
    clear.hidden = !finished;
    document.getElementById('batch-sep').hidden = !finished;
    toggle.hidden = !finished;
  }

  function finish() {
    tell();
    // NOTE: rows with a refusal stay open, to be read; and so do rows
    //   whose alt text is being typed.
    showList(batch.failed > 0 || rows.contains(document.activeElement));
    const first = batch.items.find((item) => item.tile)?.tile;
    if (first) {
      const heading = document.getElementById('images-heading');
      const box = first.getBoundingClientRect();
      if (box.top < 0 || box.bottom > window.innerHeight) {
        const reduce = window.matchMedia('(prefers-reduced-motion: reduce)').matches;
        heading.scrollIntoView({ block: 'start', behavior: reduce ? 'auto' : 'smooth' });
      }
    }
  }

  function placeTiles() {
    // The batch's tiles at the top of the grid, in the order the files were picked.
    const tiles = batch.items.map((item) => item.tile).filter(Boolean);
    list.grid.prepend(...tiles);
    list.clearStatus();
  }

  function pump() {
    while (running < PARALLEL_UPLOADS && waiting.length) {
      const [file, item, owner] = waiting.shift();
      running += 1;
      upload(file, item, maxBytes, (description) => {
        item.tile = tile(description, list.sizes);
        item.onDescribed = (changed) => {
          const img = item.tile.querySelector('img');
          img.alt = altText(changed);
        };
        placeTiles();
      }).then((ok) => {
        if (ok) owner.uploaded += 1;
        else owner.failed += 1;
        if (owner === batch) {
          if (owner.uploaded + owner.failed === owner.items.length) finish();
          else tell();
        }
      }).finally(() => {
        running -= 1;
        pump();
      });
    }
  }

  function take(files) {
    if (!files.length) return;
    if (!batch || batch.uploaded + batch.failed === batch.items.length) {
      // A new batch: the rows of the one before go.
      rows.replaceChildren();
      batch = { items: [], uploaded: 0, failed: 0 };
    }
    for (const file of files) {
      const item = new UploadItem(file, rows, maxAlt);
      batch.items.push(item);
      waiting.push([file, item, batch]);
    }
    batchBox.hidden = false;
    showList(true);
    tell();
    pump();
  }

  clear.addEventListener('click', () => {
    rows.replaceChildren();
    batchBox.hidden = true;
    batch = null;
    input.focus();
  });
  toggle.addEventListener('click', () => showList(rows.hidden));

  input.addEventListener('change', () => {
    take([...input.files]);
    input.value = '';
  });
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    take([...input.files]);
    input.value = '';
  });

  // Files may be dropped anywhere on the page; the form shows where they go.
  const carriesFiles = (event) => [...(event.dataTransfer?.types || [])].includes('Files');
  let depth = 0;
  document.addEventListener('dragenter', (event) => {
    if (!carriesFiles(event)) return;
    depth += 1;
    form.classList.add('dragging');
  });
  document.addEventListener('dragleave', (event) => {
    if (!carriesFiles(event)) return;
    depth = Math.max(0, depth - 1);
    if (!depth) form.classList.remove('dragging');
  });
  document.addEventListener('dragover', (event) => {
    if (!carriesFiles(event)) return;
    event.preventDefault();
    event.dataTransfer.dropEffect = 'copy';
  });
  document.addEventListener('drop', (event) => {
    if (!carriesFiles(event)) return;
    event.preventDefault();
    depth = 0;
    form.classList.remove('dragging');
    take([...event.dataTransfer.files]);
  });
}

// -- one image's page ---------------------------------------------------------------------

function setUpCopying() {
  const status = document.getElementById('copy-status');
  for (const button of document.querySelectorAll('button[data-copy]')) {
    const input = document.getElementById(button.dataset.copy);
    const label = document.querySelector(`label[for="${input.id}"]`).textContent;
    button.hidden = false;
    button.setAttribute('aria-label', `Copy: ${label}`);
    button.addEventListener('click', async () => {
      try {
        await navigator.clipboard.writeText(input.value);
        status.textContent = `Copied: ${label}.`;
      } catch {
        input.focus();
        input.select();
        status.textContent = 'Selected: press Ctrl+C (⌘C) to copy.';
      }
    });
  }
}

function setUpDeleting() {
  const figure = document.getElementById('image');
  const section = document.getElementById('delete');
  const button = document.getElementById('delete-button');
  const status = document.getElementById('delete-status');
  const id = figure.dataset.id;
  const credential = () => deleteTokens()[id] || apiKey();
  if (keysRequired && !credential()) return;
  section.hidden = false;
  button.addEventListener('click', async () => {
    if (!window.confirm('Delete this image for everyone? This cannot be undone.')) return;
    button.disabled = true;
    let response;
    let text = '';
    try {
      response = await fetch(`/images/${id}.jpeg`, {
        method: 'DELETE',
        headers: { Accept: 'application/json', ...authorization(credential()) },
      });
      text = await response.text();
    } catch {
      response = null;
    }
    if (response && (response.status === 204 || response.status === 404)) {
      forgetDeleteToken(id);
      rememberDeleted(id);
      for (const element of document.querySelectorAll('main > section, #image')) element.remove();
      status.textContent = response.status === 204
        ? 'The image was deleted.'
        : 'This image was deleted already.';
      // NOTE: the page's heading went with the image: focus moves to one that says why.
      const heading = document.getElementById('deleted-heading');
      heading.textContent = response.status === 204
        ? 'The image was deleted'
        : 'This image was deleted already';
      heading.hidden = false;
      heading.focus();
      document.title = `${heading.textContent} · look`;
      return;
    }
    button.disabled = false;
    status.textContent = failure(response ? response.status : 0, text, 'Deleting');
    status.classList.add('error');
  });
}

function setUpViewer() {
  // Previous and next in the gallery's order, by the arrow keys as by the links.
  document.addEventListener('keydown', (event) => {
    if (event.altKey || event.ctrlKey || event.metaKey || event.shiftKey) return;
    if (event.target.closest?.('input, textarea, select, [contenteditable]')) return;
    const link = document.getElementById(
      { ArrowLeft: 'newer', ArrowRight: 'older' }[event.key] || '',
    );
    if (link) {
      event.preventDefault();
      link.click();
    }
  });

  const share = document.getElementById('share');
  const status = document.getElementById('share-status');
  share.hidden = false;
  share.addEventListener('click', async () => {
    const { url, title } = share.dataset;
    if (navigator.share) {
      try {
        await navigator.share({ title, url });
        return;
      } catch (error) {
        if (error.name === 'AbortError') return; // the person changed their mind
      }
    }
    try {
      await navigator.clipboard.writeText(url);
      status.textContent = 'Link to this page copied.';
    } catch {
      const input = document.getElementById('link-page');
      input.focus();
      input.select();
      status.textContent = 'Selected: press Ctrl+C (⌘C) to copy.';
    }
  });
}

function setUpDescribing() {
  const figure = document.getElementById('image');
  const form = document.getElementById('alt-form');
  const text = document.getElementById('alt-text');
  const current = document.getElementById('alt-current');
  const status = document.getElementById('alt-status');
  const id = figure.dataset.id;
  const credential = () => deleteTokens()[id] || apiKey();
  if (keysRequired && !credential()) return;
  form.hidden = false;
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const answer = await sendAlt(id, text.value.trim(), credential());
    if (!answer.ok) {
      status.textContent = answer.text;
      status.classList.add('error');
      return;
    }
    status.classList.remove('error');
    const { alt } = answer.description;
    current.textContent = alt || 'None: the page says when it was uploaded and how large it is.';
    figure.querySelector('img').alt = altText(answer.description);
    status.textContent = 'Saved.';
  });
}

// -- start ------------------------------------------------------------------------------------

paintPlaceholders(document);
if (document.body.dataset.page === 'gallery') {
  const list = setUpList();
  setUpKeyForm(() => list.restart());
  setUpUploads(list);
} else if (document.body.dataset.page === 'image') {
  setUpViewer();
  setUpCopying();
  setUpDescribing();
  setUpDeleting();
}
