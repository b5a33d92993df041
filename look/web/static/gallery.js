// look's gallery: uploads, endless scrolling, copying and deleting, added to pages that
// work without any of it. Everything goes through the JSON API; errors are shown in the
// words of its "description".

const KEY_ITEM = 'look:api-key';
const TOKENS_ITEM = 'look:delete-tokens';
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
  const formats = Object.values(description.formats);
  // A source per format but JPEG; one the image has no thumbnails in is left out, as the
  // server leaves it out.
  for (const source of item.querySelectorAll('source')) {
    const rendered = formats.find((format) => format.type === source.type);
    if (rendered?.srcset) {
      source.srcset = rendered.srcset;
      source.sizes = sizes;
    } else {
      source.remove();
    }
  }
  const img = item.querySelector('img');
  const jpeg = description.formats.jpeg.srcset;
  if (jpeg) {
    img.srcset = jpeg;
    img.sizes = sizes;
  } else {
    img.removeAttribute('srcset');
    img.removeAttribute('sizes');
  }
  img.width = description.size[0];
  img.height = description.size[1];
  img.alt = altText(description);
  img.src = fallbackSrc(description);
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

function nextLink(header) {
  const match = /<([^>]*)>\s*;\s*rel="?next"?/.exec(header || '');
  return match ? match[1] : null;
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

  async function loadMore(event) {
    event?.preventDefault();
    if (loading || !next) return;
    loading = true;
    const started = generation;
    let response;
    let text;
    try {
      response = await fetch(next, {
        headers: { Accept: 'application/json', ...authorization(apiKey()) },
      });
      text = await response.text();
    } catch {
      response = null;
    }
    if (started !== generation) return; // the key changed meanwhile: this page is stale
    loading = false;
    if (!response || !response.ok) {
      const code = response ? response.status : 0;
      status.textContent = failure(code, text, 'Listing images');
      status.classList.add('error');
      if (code === 401) document.getElementById('key')?.focus();
      return;
    }
    status.classList.remove('error');
    const descriptions = JSON.parse(text);
    grid.append(...descriptions.map((description) => tile(description, sizes)));
    next = nextLink(response.headers.get('Link'));
    if (control?.tagName === 'A' && descriptions.length) {
      const url = new URL(control.href);
      url.searchParams.set('after', descriptions[descriptions.length - 1].id);
      control.href = url.pathname + url.search;
    }
    status.textContent = grid.children.length ? '' : 'No images yet: upload the first one.';
    showControl();
  }

  function restart() {
    generation += 1;
    loading = false;
    grid.replaceChildren();
    next = grid.dataset.first;
    status.textContent = '';
    loadMore();
  }

  control?.addEventListener('click', loadMore);
  if (grid.dataset.listed === 'false') {
    if (apiKey()) loadMore(); // from data-next: where this address starts
    else status.textContent = 'Enter an API key above to see the images.';
  } else {
    showControl();
  }

  return {
    restart,
    prepend(description) {
      grid.prepend(tile(description, sizes));
      status.textContent = '';
    },
  };
}

// -- uploads ----------------------------------------------------------------------------

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

function send(file, onProgress) {
  return new Promise((resolve) => {
    const request = new XMLHttpRequest();
    request.open('POST', '/images');
    request.setRequestHeader('Accept', 'application/json');
    request.setRequestHeader('Content-Type', file.type || 'application/octet-stream');
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
    request.send(file);
  });
}

// NOTE: progress goes to each item's <progress>; only outcomes are announced,
//   in one status line, so a screen reader is not read every percent.
function announce(text) {
  document.getElementById('upload-status').textContent = text;
}

class UploadItem {
  constructor(file, list) {
    this.name = file.name;
    this.element = document.createElement('li');
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
    this.element.append(name, this.progress, this.state);
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
    this.progress.value = 100;
    this.state.replaceChildren('Uploaded: ');
    const link = document.createElement('a');
    link.href = `/view/${description.id}`;
    link.textContent = 'its page';
    this.state.append(link);
    this.state.className = 'state done';
    this.element.dataset.id = description.id;
    announce(`Uploaded ${this.name}.`);
  }

  failed(text) {
    this.progress.remove();
    this.state.textContent = text;
    this.state.className = 'state error';
    this.element.classList.add('failed');
    announce(`${this.name} was not uploaded: ${text}`);
  }
}

async function upload(file, item, maxBytes, onUploaded) {
  if (file.size > maxBytes) {
    item.failed(`The file is larger than the limit of ${formatBytes(maxBytes)}; it was not sent.`);
    return;
  }
  for (let attempt = 1; ; attempt += 1) {
    item.progressed(0);
    const answer = await send(file, (fraction) => item.progressed(fraction));
    if (answer.status === 201) {
      const description = JSON.parse(answer.text);
      keepDeleteToken(description.id, description.delete_token);
      item.done(description);
      onUploaded(description);
      return;
    }
    const wait = Number.parseInt(answer.retryAfter, 10);
    if (answer.status === 503 && attempt === 1 && wait >= 0 && wait <= MAX_RETRY_WAIT) {
      item.say(`The server is busy; trying again in ${wait} s…`);
      await sleep(wait);
      continue;
    }
    item.failed(failure(answer.status, answer.text, 'Uploading'));
    if (answer.status === 401) document.getElementById('key')?.focus();
    return;
  }
}

function setUpUploads(onUploaded) {
  const form = document.getElementById('upload');
  const input = document.getElementById('files');
  const list = document.getElementById('uploads');
  const maxBytes = Number(form.dataset.maxBytes);
  const waiting = [];
  let running = 0;

  for (const element of form.querySelectorAll('.no-js')) element.hidden = true;
  for (const element of form.querySelectorAll('.js-only')) element.hidden = false;

  function pump() {
    while (running < PARALLEL_UPLOADS && waiting.length) {
      const [file, item] = waiting.shift();
      running += 1;
      upload(file, item, maxBytes, onUploaded).finally(() => {
        running -= 1;
        pump();
      });
    }
  }

  function take(files) {
    for (const file of files) waiting.push([file, new UploadItem(file, list)]);
    pump();
  }

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
      for (const element of document.querySelectorAll('main > section, #image')) element.remove();
      status.textContent = response.status === 204
        ? 'The image was deleted.'
        : 'This image was deleted already.';
      return;
    }
    button.disabled = false;
    status.textContent = failure(response ? response.status : 0, text, 'Deleting');
    status.classList.add('error');
  });
}

// -- start ------------------------------------------------------------------------------------

if (document.body.dataset.page === 'gallery') {
  const list = setUpList();
  setUpKeyForm(() => list.restart());
  setUpUploads((description) => list.prepend(description));
} else if (document.body.dataset.page === 'image') {
  setUpCopying();
  setUpDeleting();
}
