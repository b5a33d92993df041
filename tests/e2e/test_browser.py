"""The gallery in a real browser: Debian's chromium, driven by Playwright, against real gunicorn.

Each test opens its own browser context (fresh storage and cache) and fails
on any console error or uncaught exception it did not expect by name.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import pathlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Browser, ConsoleMessage, Page, Route, sync_playwright

from look.config import Config
from look.core.backends import open_library
from look.imaging.formats import READABLE_FORMATS, THUMBNAIL_FORMATS

from support import thumbhashes
from support.gunicorn import MAX_UPLOAD_BYTES, Gunicorn
from support.http import get, post, request
from support.imagegen import image_bytes, moving_picture
from support.processes import require_executable

pytestmark = pytest.mark.e2e

# NOTE: playwright's launch() gives every browser a fresh user-data dir of
#   its own, and adds --headless itself; these keep chromium from reaching
#   for the network or the GPU.
CHROMIUM_ARGS = [
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--no-first-run',
]
WIDE = {'width': 1280, 'height': 800}
NARROW = {'width': 360, 'height': 640}
# The two people the gallery is tried as: at a laptop and at a phone.
LAPTOP = {'width': 1366, 'height': 768}
PHONE = {'viewport': {'width': 390, 'height': 844}, 'is_mobile': True, 'has_touch': True}
SIZES = pytest.mark.parametrize('device', [{'viewport': LAPTOP}, PHONE], ids=['laptop', 'phone'])
TOUCH = 44  # CSS pixels: the smallest target a finger hits (WCAG 2.5.5)
KEY = 'browser-test-key-0123456789'
# Halving 1600x1200 gives thumbnails 800, 400, 200 and 100 pixels wide.
PHOTO = image_bytes('JPEG', size=(1600, 1200), seed=1)
WAIT = 20_000  # milliseconds: the longest any step may take on a loaded machine


@pytest.fixture(scope='module', name='gunicorn')
def gallery_gunicorn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gunicorn]:
    """One gunicorn for the module, rendering every thumbnail format the thumbnailer encodes."""
    environ = {
        'LOOK_MAX_UPLOAD_BYTES': str(MAX_UPLOAD_BYTES),
        'LOOK_THUMBNAIL_FORMATS': ','.join(THUMBNAIL_FORMATS),
    }
    with Gunicorn(tmp_path_factory.mktemp('storage'), workers=2, environ=environ) as server:
        yield server


@pytest.fixture(scope='module')
def thumbhash_reference(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """The published ThumbHash implementation, installed by npm, to compare the gallery's with."""
    return thumbhashes.install_reference(tmp_path_factory.mktemp('thumbhash'))


@pytest.fixture(scope='module')
def browser() -> Iterator[Browser]:
    """One headless chromium for the module."""
    executable = require_executable('chromium')
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@dataclasses.dataclass
class Tab:
    """A page in its own context, with what its console said."""

    page: Page
    errors: list[str] = dataclasses.field(default_factory=list)
    expected: list[str] = dataclasses.field(default_factory=list)

    def expect_error(self, text: str) -> None:
        """Allow console errors that contain ``text`` (a failed request the test provokes)."""
        self.expected.append(text)

    def unexpected_errors(self) -> list[str]:
        return [e for e in self.errors if not any(text in e for text in self.expected)]


OpenTab = Callable[..., Tab]


@pytest.fixture
def open_tab(browser: Browser) -> Iterator[OpenTab]:
    """Open pages in fresh contexts; after the test, fail on any unexpected console error."""
    tabs: list[Tab] = []
    contexts = []

    def open_tab(url: str | None = None, **options: Any) -> Tab:
        context = browser.new_context(**{'viewport': WIDE, **options})
        context.set_default_timeout(WAIT)
        contexts.append(context)
        tab = Tab(context.new_page())

        def on_console(message: ConsoleMessage) -> None:
            if message.type == 'error':
                tab.errors.append(f'{message.text} ({message.location.get("url")})')

        tab.page.on('console', on_console)
        tab.page.on('pageerror', lambda error: tab.errors.append(f'uncaught: {error}'))
        tabs.append(tab)
        if url is not None:
            tab.page.goto(url)
        return tab

    yield open_tab
    for context in contexts:
        context.close()
    unexpected = [error for tab in tabs for error in tab.unexpected_errors()]
    assert not unexpected, 'console errors:\n' + '\n'.join(unexpected)


# -- helpers ---------------------------------------------------------------------------------


def api_upload(server: Gunicorn, data: bytes = PHOTO, key: str | None = None) -> dict[str, Any]:
    headers = {'Content-Type': 'application/octet-stream'}
    if key:
        headers['Authorization'] = f'Bearer {key}'
    response = request('POST', f'{server.url}/images', data, headers)
    assert response.status == 201, response.body
    description: dict[str, Any] = response.json()
    return description


def api_ids(server: Gunicorn, key: str | None = None) -> list[str]:
    headers = {'Authorization': f'Bearer {key}'} if key else {}
    response = get(f'{server.url}/images?order=newest&limit=1000', headers)
    assert response.status == 200, response.body
    return [description['id'] for description in response.json()]


def tile_hrefs(page: Page) -> list[str]:
    hrefs: list[str] = page.eval_on_selector_all(
        '#grid .tile a', 'links => links.map(a => a.getAttribute("href"))'
    )
    return hrefs


def upload_file(name: str, data: bytes, mime_type: str) -> dict[str, Any]:
    return {'name': name, 'mimeType': mime_type, 'buffer': data}


def wait_for_uploads(page: Page, count: int) -> None:
    """Wait until ``count`` uploads in the list are done or failed."""
    page.wait_for_function(
        'n => document.querySelectorAll("#uploads .done, #uploads .error").length >= n', arg=count
    )


def tile_attributes(page: Page, href: str) -> dict[str, Any]:
    """Return every attribute of a tile's <img> and <source>s, as the DOM has them."""
    result: dict[str, Any] = page.eval_on_selector(
        f'#grid a[href="{href}"]',
        """link => {
            const attributes = (e) => Object.fromEntries(
                e.getAttributeNames().map((name) => [name, e.getAttribute(name)]));
            return {
                item: attributes(link.parentElement),
                img: attributes(link.querySelector('img')),
                sources: [...link.querySelectorAll('source')].map(attributes),
            };
        }""",
    )
    return result


def api_error(server: Gunicorn, data: bytes) -> str:
    response = post(f'{server.url}/images', data)
    assert response.status >= 400
    description: str = response.json()['description']
    return description


# -- uploads ----------------------------------------------------------------------------------


def test_uploads_through_the_page_appear_without_a_reload(
    gunicorn: Gunicorn, open_tab: OpenTab
) -> None:
    tab = open_tab(f'{gunicorn.url}/')
    page = tab.page
    before = tile_hrefs(page)
    tab.expect_error('status of 415')

    # Several files at once through the picker: one is no image, one is too large to send.
    page.set_input_files(
        '#files',
        [
            upload_file('photo.jpg', PHOTO, 'image/jpeg'),
            upload_file('notes.txt', b'not an image', 'text/plain'),
            upload_file('drawing.png', image_bytes('PNG', size=(800, 600), seed=2), 'image/png'),
            upload_file('huge.jpg', bytes(MAX_UPLOAD_BYTES + 1), 'image/jpeg'),
        ],
    )
    wait_for_uploads(page, 4)
    assert page.locator('#uploads li').count() == 4
    failures = dict(
        page.eval_on_selector_all(
            '#uploads li.failed',
            """items => items.map((li) => [
                li.querySelector('.name').textContent,
                li.querySelector('.state').textContent,
            ])""",
        )
    )
    assert failures == {
        'notes.txt': api_error(gunicorn, b'not an image'),
        'huge.jpg': 'The file is larger than the limit of 1 MiB; it was not sent.',
    }
    assert 'not an image look can read' in failures['notes.txt']
    # Outcomes, not every percent, are announced to screen readers.
    assert page.locator('#upload-status').get_attribute('role') == 'status'
    assert page.text_content('#upload-status') in {
        *(f'Uploaded {name}.' for name in ('photo.jpg', 'drawing.png')),
        *(f'{name} was not uploaded: {text}' for name, text in failures.items()),
    }
    uploaded = [
        f'/view/{i}'
        for i in page.eval_on_selector_all(
            '#uploads li[data-id]', 'items => items.map(li => li.dataset.id)'
        )
    ]
    assert len(uploaded) == 2
    assert set(tile_hrefs(page)[:2]) == set(uploaded)
    assert tile_hrefs(page)[2:] == before
    for progress in page.locator('#uploads progress').all():
        assert progress.get_attribute('value') == '100'

    # One more, dropped onto the page.
    drop = image_bytes('PNG', size=(640, 480), seed=3)
    page.evaluate(
        """([name, type, data]) => {
            const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, { type }));
            const form = document.getElementById('upload');
            const fire = (kind) => form.dispatchEvent(new DragEvent(kind, {
                bubbles: true, cancelable: true, dataTransfer: transfer }));
            fire('dragenter');
            fire('dragover');
            window.lookDragging = form.classList.contains('dragging');
            fire('drop');
        }""",
        ['dropped.png', 'image/png', base64.b64encode(drop).decode()],
    )
    assert page.evaluate('window.lookDragging') is True
    assert 'dragging' not in (page.get_attribute('#upload', 'class') or '')
    # A new batch: the rows of the one before go.
    page.wait_for_function('() => document.querySelectorAll("#uploads li").length === 1')
    wait_for_uploads(page, 1)
    dropped = page.eval_on_selector('#uploads li:last-child', 'li => li.dataset.id')
    assert tile_hrefs(page)[0] == f'/view/{dropped}'
    assert tile_hrefs(page)[3:] == before

    # Each upload's delete token is kept, for its page's delete button.
    tokens = json.loads(page.evaluate('localStorage.getItem("look:delete-tokens")'))
    assert set(tokens) == {href.removeprefix('/view/') for href in [*uploaded, f'/view/{dropped}']}

    # The tiles the script made are the tiles the server renders.
    made = {href: tile_attributes(page, href) for href in tile_hrefs(page)[:3]}
    page.reload()
    # NOTE: the two picked at once may commit in one order and be answered in the other.
    assert tile_hrefs(page)[0] == f'/view/{dropped}'
    assert set(tile_hrefs(page)[:3]) == set(made)
    for href, attributes in made.items():
        assert tile_attributes(page, href) == attributes


def test_an_upload_answered_503_is_tried_once_more(gunicorn: Gunicorn, open_tab: OpenTab) -> None:
    tab = open_tab(f'{gunicorn.url}/')
    page = tab.page
    tab.expect_error('status of 503')
    busy = json.dumps({'title': 'Too many uploads', 'description': 'Busy here; try again.'})
    answers = ['busy', 'pass', 'busy', 'busy']
    seen = []

    def answer(route: Route) -> None:
        seen.append(route.request.method)
        if route.request.method != 'POST':
            route.continue_()
        elif answers.pop(0) == 'busy':
            headers = {'Retry-After': '0', 'Content-Type': 'application/json'}
            route.fulfill(status=503, headers=headers, body=busy)
        else:
            route.continue_()

    page.route('**/images', answer)
    page.set_input_files('#files', [upload_file('a.png', image_bytes('PNG', seed=4), 'image/png')])
    wait_for_uploads(page, 1)
    assert page.locator('#uploads .done').count() == 1
    page.set_input_files('#files', [upload_file('b.png', image_bytes('PNG', seed=5), 'image/png')])
    page.wait_for_selector('#uploads .error')
    assert page.locator('#uploads .error').text_content() == 'Busy here; try again.'
    assert seen == ['POST'] * 4 and not answers


def test_the_script_fills_in_the_tile_the_server_renders(
    gunicorn: Gunicorn, open_tab: OpenTab
) -> None:
    tab = open_tab(f'{gunicorn.url}/')
    page = tab.page
    # The page carries a blank tile to clone, in a <template>: not a tile of the grid.
    assert page.eval_on_selector('#tile-template', 't => t.content.querySelectorAll("img").length')
    assert tile_hrefs(page).count('') == 0

    # One image too small for thumbnails (no sources, no srcset), one with every format.
    tiny = image_bytes('PNG', size=(100, 100), seed=8)
    page.set_input_files('#files', [upload_file('tiny.png', tiny, 'image/png')])
    wait_for_uploads(page, 1)
    page.set_input_files('#files', [upload_file('photo.jpg', PHOTO, 'image/jpeg')])
    page.wait_for_function('() => document.querySelector("#uploads li .done, #uploads li .error")')
    wait_for_uploads(page, 1)
    made = {href: tile_attributes(page, href) for href in tile_hrefs(page)[:2]}
    large, small = made.values()  # newest first
    # The small one's only candidate is its original; no source of any other format.
    assert small['img']['srcset'].endswith('.jpeg 100w') and not small['sources']
    assert large['img']['srcset'] and len(large['sources']) == len(THUMBNAIL_FORMATS) - 1

    page.reload()
    assert tile_hrefs(page)[:2] == list(made)
    for href, attributes in made.items():
        assert tile_attributes(page, href) == attributes


# -- srcset and paging -------------------------------------------------------------------------


@pytest.mark.parametrize(('viewport', 'width'), [(NARROW, 200), (WIDE, 400)])
def test_the_browser_picks_the_thumbnail_its_viewport_needs(
    gunicorn: Gunicorn, open_tab: OpenTab, viewport: dict[str, int], width: int
) -> None:
    description = api_upload(gunicorn)
    image_id = description['id']
    tab = open_tab(f'{gunicorn.url}/?limit=1', viewport=viewport)
    img = tab.page.locator(f'#grid a[href="/view/{image_id}"] img')
    img.evaluate('img => img.decode()')
    current = img.evaluate('img => new URL(img.currentSrc).pathname')
    best = next(iter(description['formats']))  # chromium shows every format look renders
    assert current == f'/thumbnails/{image_id}/{width}x{width * 3 // 4}.{best}'
    # The slot that sizes= promised is the width the grid gives the tile (less any scrollbar).
    promised, laid_out = img.evaluate('img => [img.naturalWidth, img.clientWidth]')
    assert laid_out <= promised <= laid_out + 16, (promised, laid_out)


def test_scrolling_pages_through_the_link_cursor(gunicorn: Gunicorn, open_tab: OpenTab) -> None:
    small = image_bytes('PNG', size=(256, 192), seed=6)
    while len(api_ids(gunicorn)) < 40:
        api_upload(gunicorn, small)
    everything = api_ids(gunicorn)
    limit = 15
    tab = open_tab(viewport={'width': 800, 'height': 600})
    page = tab.page
    fetched = []
    page.on('request', lambda r: fetched.append(r.url) if '/images?' in r.url else None)
    page.goto(f'{gunicorn.url}/?limit={limit}', wait_until='networkidle')
    assert len(tile_hrefs(page)) == limit, 'the first page should fill more than the screen'
    assert fetched == []

    shown = limit
    while shown < len(everything):
        page.mouse.wheel(0, 4000)
        page.wait_for_function(
            'n => document.querySelectorAll("#grid .tile").length > n', arg=shown
        )
        shown = len(tile_hrefs(page))
    assert tile_hrefs(page) == [f'/view/{image_id}' for image_id in everything]
    page.wait_for_selector('#older', state='detached')
    # Each page was asked for where the Link header of the one before pointed.
    expected = [f'/images?limit={limit}&order=newest&after={everything[limit - 1]}']
    while len(expected) < len(fetched):
        expected.append(get(f'{gunicorn.url}{expected[-1]}').header('Link') or '')
        expected[-1] = expected[-1][1 : expected[-1].index('>')]
    assert [url.removeprefix(gunicorn.url) for url in fetched] == expected


# -- one image ----------------------------------------------------------------------------------


def test_an_image_page_copies_links_and_deletes(gunicorn: Gunicorn, open_tab: OpenTab) -> None:
    tab = open_tab(f'{gunicorn.url}/')
    page = tab.page
    page.context.grant_permissions(['clipboard-read', 'clipboard-write'])
    page.set_input_files('#files', [upload_file('photo.jpg', PHOTO, 'image/jpeg')])
    wait_for_uploads(page, 1)
    image_id = page.eval_on_selector('#uploads li', 'li => li.dataset.id')
    page.click(f'#grid a[href="/view/{image_id}"]')
    page.wait_for_url(f'**/view/{image_id}')

    img = page.locator('#image img')
    img.evaluate('img => img.decode()')
    assert img.evaluate('img => new URL(img.currentSrc).pathname') == f'/images/{image_id}.jpeg'
    og_image = page.get_attribute('meta[property="og:image"]', 'content')
    assert og_image == f'{gunicorn.url}/thumbnails/{image_id}/800x600.jpeg'
    assert get(og_image).status == 200

    page.click('button[data-copy="link-page"]')
    page.wait_for_function('() => document.getElementById("copy-status").textContent !== ""')
    assert page.text_content('#copy-status') == 'Copied: This page.'
    assert page.evaluate('navigator.clipboard.readText()') == f'{gunicorn.url}/view/{image_id}'

    page.once('dialog', lambda dialog: dialog.accept())
    page.click('#delete-button')
    page.wait_for_function('() => document.getElementById("delete-status").textContent !== ""')
    assert page.text_content('#delete-status') == 'The image was deleted.'
    assert page.locator('#image').count() == 0
    # Focus moves to a heading that says so: the page keeps an h1.
    assert page.evaluate('document.activeElement.id') == 'deleted-heading'
    assert page.text_content('h1:not([hidden])') == 'The image was deleted'
    assert get(f'{gunicorn.url}/images/{image_id}.jpeg').status == 404
    tokens = json.loads(page.evaluate('localStorage.getItem("look:delete-tokens")'))
    assert image_id not in tokens


def test_without_javascript_the_gallery_is_a_plain_list(
    gunicorn: Gunicorn, open_tab: OpenTab
) -> None:
    while len(everything := api_ids(gunicorn)) < 3:
        api_upload(gunicorn, image_bytes('PNG', size=(256, 192), seed=7))
    tab = open_tab(f'{gunicorn.url}/?limit=2', java_script_enabled=False)
    page = tab.page
    assert tile_hrefs(page) == [f'/view/{i}' for i in everything[:2]]
    assert page.is_visible('#upload button[type="submit"]')
    page.click('#older')
    page.wait_for_url(f'**/?limit=2&after={everything[1]}')
    assert tile_hrefs(page) == [f'/view/{i}' for i in everything[2:4]]

    page.click(f'#grid a[href="/view/{everything[2]}"]')
    page.wait_for_url(f'**/view/{everything[2]}')
    page.wait_for_load_state('load')
    assert page.eval_on_selector('#image img', 'img => img.complete && img.naturalWidth > 0')
    assert page.input_value('#link-page') == f'{gunicorn.url}/view/{everything[2]}'
    assert not page.is_visible('#delete') and not page.is_visible('button[data-copy]')

    # The form posts every file it carries, and look answers with a page that shows them.
    page.goto(f'{gunicorn.url}/')
    page.set_input_files(
        '#files',
        [
            upload_file('photo.jpg', PHOTO, 'image/jpeg'),
            upload_file('notes.txt', b'not an image', 'text/plain'),
            upload_file('drawing.png', image_bytes('PNG', size=(300, 200), seed=9), 'image/png'),
        ],
    )
    page.fill('#alt', 'A test photo of coloured rectangles')
    with page.expect_navigation():
        page.click('#upload button[type="submit"]')
    assert page.url.startswith(f'{gunicorn.url}/uploaded?')
    assert page.text_content('h1') == '2 uploaded, 1 refused'
    assert page.text_content('.refused li') == (
        f'notes.txt: it is not an image look reads ({READABLE_FORMATS}).'
    )
    newest = api_ids(gunicorn)[:2]
    assert sorted(tile_hrefs(page)) == sorted(f'/view/{i}' for i in newest)
    alts = page.eval_on_selector_all('#grid img', 'imgs => imgs.map(img => img.alt)')
    assert 'A test photo of coloured rectangles' in alts
    assert 'token' not in (page.content() + page.url)

    # A tile deleted in another tab is a page with a way back, not JSON.
    gone = request('DELETE', f'{gunicorn.url}/images/{newest[0]}.jpeg', b'', {})
    assert gone.status == 204
    tab.expect_error('status of 404')
    answer = page.goto(f'{gunicorn.url}/view/{newest[0]}')
    assert answer is not None and answer.status == 404
    assert page.text_content('h1') == 'Image not found'
    page.click('text=Back to all images')
    page.wait_for_url(f'{gunicorn.url}/')


# -- accessibility ------------------------------------------------------------------------------


@SIZES
def test_the_pages_pass_an_accessibility_check(
    gunicorn: Gunicorn, open_tab: OpenTab, device: dict[str, Any]
) -> None:
    description = api_upload(gunicorn)
    described = api_upload(gunicorn, image_bytes('PNG', size=(320, 200), seed=12))
    tab = open_tab(f'{gunicorn.url}/?limit=6', **device)
    page = tab.page
    tab.expect_error('status of 415')
    tab.expect_error('status of 404')
    page.set_input_files(
        '#files',
        [
            upload_file('notes.txt', b'text', 'text/plain'),
            upload_file('one.png', image_bytes('PNG', size=(200, 150), seed=13), 'image/png'),
        ],
    )
    wait_for_uploads(page, 2)  # an upload that failed shows its words too, and rows their alt
    axe = Axe()
    for path in (
        '/?limit=6',
        f'/view/{description["id"]}',
        f'/uploaded?image={described["id"]}&refused=notes.txt&why=unsupported',
        '/view/00000000-0000-4000-8000-000000000000',
    ):
        if path != '/?limit=6':
            page.goto(f'{gunicorn.url}{path}')
        page.wait_for_load_state('networkidle')
        for color_scheme in ('light', 'dark'):
            page.emulate_media(color_scheme=color_scheme)
            results = axe.run(page)
            report = results.generate_report()
            assert results.violations_count == 0, f'{path}, {color_scheme}: {report}'

    # The keyboard's focus is always visible.
    page.keyboard.press('Tab')
    outline = page.evaluate(
        """() => {
            const style = getComputedStyle(document.activeElement);
            return [document.activeElement.tagName, style.outlineStyle, style.outlineWidth];
        }"""
    )
    assert outline == ['A', 'solid', '3px']


# -- what people expect (issue: uploads in view, words, a viewer, Back, touch) --------------------


def visible_tiles(page: Page, hrefs: list[str]) -> list[str]:
    """Return those of these tiles that are wholly inside the viewport."""
    shown: list[str] = page.evaluate(
        """hrefs => hrefs.filter((href) => {
            const box = document.querySelector(`#grid a[href="${href}"]`).getBoundingClientRect();
            return box.top >= 0 && box.left >= 0 && box.bottom <= window.innerHeight
                && box.right <= window.innerWidth;
        })""",
        hrefs,
    )
    return shown


@SIZES
def test_a_batch_of_uploads_lands_in_view_in_the_order_picked(
    gunicorn: Gunicorn, open_tab: OpenTab, device: dict[str, Any]
) -> None:
    while len(api_ids(gunicorn)) < 12:  # a gallery that fills more than the screen already
        api_upload(gunicorn, image_bytes('PNG', size=(256, 192), seed=20))
    tab = open_tab(f'{gunicorn.url}/', **device)
    page = tab.page
    files = [
        upload_file(
            f'photo-{n:02d}.jpg', image_bytes('JPEG', size=(800, 600), seed=100 + n), 'image/jpeg'
        )
        for n in range(12)
    ]
    # Every text the batch's line takes, as it takes it: a batch can be over
    # before a test's next look.
    page.evaluate(
        """() => {
            const count = document.getElementById('batch-count');
            window.batchTexts = [];
            new MutationObserver(() => window.batchTexts.push(count.textContent))
                .observe(count, {childList: true, characterData: true, subtree: true});
        }"""
    )
    started = time.monotonic()
    page.set_input_files('#files', files)
    page.wait_for_function(
        '() => document.getElementById("batch-count").textContent === "12 uploaded"'
    )
    # While it ran, the line said how far it was.
    texts = page.evaluate('window.batchTexts')
    assert any(text.endswith(' of 12 uploaded') for text in texts), texts
    ids = page.eval_on_selector_all('#uploads li', 'items => items.map(li => li.dataset.id)')
    new = [f'/view/{i}' for i in ids]
    page.wait_for_function(
        """hrefs => {
            const box = document.querySelector(`#grid a[href="${hrefs[0]}"]`)
                .getBoundingClientRect();
            return box.top >= 0 && box.bottom <= window.innerHeight;
        }""",
        arg=new,
    )
    seen_after = time.monotonic() - started
    print(f'\n{device["viewport"]}: 12 uploads, new tiles in view after {seen_after:.2f} s')
    # The rows fold into one line; the new tiles are first, in the order the files were picked,
    # and a whole first row of them is in view.
    assert page.is_hidden('#uploads') and page.is_visible('#batch-clear')
    assert (
        page.inner_text('.batch-line').split('\n')[0].replace('\t', ' ').startswith('12 uploaded')
    )
    assert page.is_visible('#batch-sep')
    assert page.eval_on_selector_all('#uploads li .name', 'n => n.map(e => e.textContent)') == [
        f'photo-{n:02d}.jpg' for n in range(12)
    ]
    assert tile_hrefs(page)[:12] == new
    columns = 4 if device['viewport']['width'] > 1024 else 2
    assert visible_tiles(page, new)[:columns] == new[:columns]
    # Every row shows its thumbnail; the list opens again on asking.
    page.click('#batch-toggle')
    assert page.locator('#uploads .thumb img').count() == 12
    page.click('#batch-clear')
    assert page.is_hidden('#batch') and page.evaluate('document.activeElement.id') == 'files'


@SIZES
def test_words_given_beside_a_file_become_its_alt_text(
    gunicorn: Gunicorn, open_tab: OpenTab, device: dict[str, Any]
) -> None:
    tab = open_tab(f'{gunicorn.url}/', **device)
    page = tab.page
    page.set_input_files(
        '#files', [upload_file('heron.png', image_bytes('PNG', seed=21), 'image/png')]
    )
    # The batch of one folds as soon as it is stored; its row opens again to be described.
    page.wait_for_function(
        '() => document.getElementById("batch-count").textContent === "1 uploaded"'
    )
    page.click('#batch-toggle')
    page.fill('#uploads input.alt', 'A heron on one leg')
    page.keyboard.press('Enter')
    page.locator('#uploads input.alt').blur()
    page.wait_for_function(
        '() => document.querySelector("#uploads .state").textContent === "Alt text saved."'
    )
    image_id = page.eval_on_selector('#uploads li', 'li => li.dataset.id')
    assert get(f'{gunicorn.url}/images/{image_id}.jpeg').status == 200
    described = [
        d for d in get(f'{gunicorn.url}/images?order=newest&limit=5').json() if d['id'] == image_id
    ]
    assert described[0]['alt'] == 'A heron on one leg'
    assert (
        page.get_attribute(f'#grid a[href="/view/{image_id}"] img', 'alt') == 'A heron on one leg'
    )

    # Its page says it, and changes it.
    page.goto(f'{gunicorn.url}/view/{image_id}')
    assert page.title() == 'A heron on one leg · look'
    assert page.get_attribute('#image img', 'alt') == 'A heron on one leg'
    page.fill('#alt-text', 'A grey heron on one leg')
    page.click('#alt-form button[type="submit"]')
    page.wait_for_function('() => document.getElementById("alt-status").textContent === "Saved."')
    assert page.text_content('#alt-current') == 'A grey heron on one leg'
    assert page.get_attribute('#image img', 'alt') == 'A grey heron on one leg'


@SIZES
def test_the_viewer_steps_through_the_gallery_and_shares(
    gunicorn: Gunicorn, open_tab: OpenTab, device: dict[str, Any]
) -> None:
    older = api_upload(gunicorn, image_bytes('PNG', size=(300, 300), seed=22))['id']
    small = api_upload(gunicorn, image_bytes('PNG', size=(448, 172), seed=23))['id']
    newer = api_upload(gunicorn, image_bytes('PNG', size=(640, 480), seed=24))['id']
    tab = open_tab(**device)
    page = tab.page
    page.context.grant_permissions(['clipboard-read', 'clipboard-write'])
    page.goto(f'{gunicorn.url}/view/{small}')
    img = page.locator('#image img')
    img.evaluate('img => img.decode()')
    # Never drawn larger than it is.
    slot = min(448, device['viewport']['width'] - 32)  # the page's width less its margins
    drawn = img.evaluate('img => img.getBoundingClientRect().width')
    assert slot - 1 <= drawn <= slot

    # Newer and Older, by the links and by the arrow keys, in the gallery's order.
    page.keyboard.press('ArrowRight')
    page.wait_for_url(f'**/view/{older}')
    page.keyboard.press('ArrowLeft')
    page.wait_for_url(f'**/view/{small}')
    page.click('#newer')
    page.wait_for_url(f'**/view/{newer}')
    page.click('#older')
    page.wait_for_url(f'**/view/{small}')

    # Download gives the original, under a name of its own.
    with page.expect_download() as download:
        page.click('#download')
    assert download.value.suggested_filename == f'look-{small}.jpeg'

    # Share: the Web Share API where the browser has it, else the link is copied.
    page.click('#share')
    page.wait_for_function('() => document.getElementById("share-status").textContent !== ""')
    assert page.text_content('#share-status') == 'Link to this page copied.'
    assert page.evaluate('navigator.clipboard.readText()') == f'{gunicorn.url}/view/{small}'
    page.evaluate(
        """() => { window.shared = null;
            navigator.share = (data) => { window.shared = data; return Promise.resolve(); }; }"""
    )
    page.click('#share')
    page.wait_for_function('() => window.shared !== null')
    assert page.evaluate('window.shared.url') == f'{gunicorn.url}/view/{small}'


@SIZES
def test_back_returns_to_the_same_place_without_deleted_tiles(
    gunicorn: Gunicorn, open_tab: OpenTab, device: dict[str, Any]
) -> None:
    filler = image_bytes('PNG', size=(256, 192), seed=25)
    while len(api_ids(gunicorn)) < 100:
        api_upload(gunicorn, filler)
    tab = open_tab(f'{gunicorn.url}/', **device)
    page = tab.page
    while len(tile_hrefs(page)) < 90:
        shown = len(tile_hrefs(page))
        page.mouse.wheel(0, 5000)
        page.wait_for_function(
            'n => document.querySelectorAll("#grid .tile").length > n', arg=shown
        )
    hrefs = tile_hrefs(page)
    target = hrefs[75]
    page.locator(f'#grid a[href="{target}"]').scroll_into_view_if_needed()
    page.wait_for_timeout(300)  # the place is kept a moment after scrolling stops
    place = page.evaluate('window.scrollY')
    assert place > 2 * device['viewport']['height']
    page.click(f'#grid a[href="{target}"]')
    page.wait_for_url(f'**{target}')

    # Meanwhile, the last tile shown is deleted (in another tab, say).
    gone = hrefs[-1]
    assert (
        request(
            'DELETE', f'{gunicorn.url}/images/{gone.removeprefix("/view/")}.jpeg', b'', {}
        ).status
        == 204
    )

    page.go_back()
    page.wait_for_function(
        'n => document.querySelectorAll("#grid .tile").length >= n', arg=len(hrefs) - 1
    )
    page.wait_for_function(f'() => Math.abs(window.scrollY - {place}) <= 4')
    assert tile_hrefs(page)[: len(hrefs) - 1] == hrefs[:-1]
    assert gone not in tile_hrefs(page)
    assert target in visible_tiles(page, [target])


@SIZES
def test_every_control_is_a_touch_target(
    gunicorn: Gunicorn, open_tab: OpenTab, device: dict[str, Any]
) -> None:
    image_id = api_upload(gunicorn)['id']
    tab = open_tab(f'{gunicorn.url}/', **device)
    page = tab.page
    page.set_input_files(
        '#files', [upload_file('a.png', image_bytes('PNG', seed=26), 'image/png')]
    )
    wait_for_uploads(page, 1)
    page.click('#batch-toggle')
    small = []
    for path in ('/', f'/view/{image_id}'):
        if path != '/':
            page.goto(f'{gunicorn.url}{path}')
        small += page.evaluate(
            """min => [...document.querySelectorAll('a, button, input, textarea, select')]
                .filter((e) => e.getClientRects().length && !e.closest('.visually-hidden'))
                .map((e) => [e.outerHTML.slice(0, 80), e.getBoundingClientRect()])
                .filter(([, box]) => box.height < min || box.width < min)
                .map(([html, box]) => `${html}: ${box.width}x${box.height}`)""",
            TOUCH,
        )
    assert small == []


@SIZES
def test_a_placeholder_shows_while_the_image_loads(
    gunicorn: Gunicorn,
    open_tab: OpenTab,
    device: dict[str, Any],
    thumbhash_reference: pathlib.Path,
) -> None:
    # The reference's ThumbHash of PHOTO is the one pinned for the tests.
    assert thumbhashes.encode(thumbhash_reference, thumbhashes.photo_picture()) == (
        thumbhashes.PHOTO_THUMBHASH,
        thumbhashes.PHOTO_COLOR,
    )
    image_id = api_upload(gunicorn)['id']
    library = open_library(Config(environ={}, storage_path=gunicorn.storage_path, redis_url=''))
    library.amend(image_id, thumbhash=thumbhashes.PHOTO_THUMBHASH, color=thumbhashes.PHOTO_COLOR)
    width, height, reference = thumbhashes.decode(thumbhash_reference, thumbhashes.PHOTO_THUMBHASH)

    tab = open_tab(**device)
    page = tab.page
    # The image never arrives: what shows is the placeholder.
    tab.expect_error('net::ERR_FAILED')
    for pattern in (f'**/thumbnails/{image_id}/**', f'**/images/{image_id}.*'):
        page.route(pattern, lambda route: route.abort())
    for path, box in (
        ('/?limit=6', f'#grid a[href="/view/{image_id}"]'),
        (f'/view/{image_id}', '#image'),
    ):
        page.goto(f'{gunicorn.url}{path}')
        rect = page.locator(f'{box} svg.placeholder rect')
        assert rect.get_attribute('fill') == thumbhashes.PHOTO_COLOR
        assert page.get_attribute(f'{box} svg.placeholder', 'viewBox') == '0 0 1600 1200'
        canvas = page.locator(f'{box} canvas.placeholder')
        assert canvas.evaluate('c => [c.width, c.height]') == [width, height]
        painted = canvas.evaluate(
            'c => Array.from(c.getContext("2d").getImageData(0, 0, c.width, c.height).data)'
        )
        assert bytes(painted) == reference
        shown = canvas.evaluate('c => c.getBoundingClientRect().width')
        assert shown > 100  # drawn at the size of the image's box, not 32 pixels


@SIZES
def test_an_animation_plays_ahead_of_its_still(
    gunicorn: Gunicorn, open_tab: OpenTab, device: dict[str, Any]
) -> None:
    """The tile and the image page show the animated WebP; the tile the script clones can too."""
    described = api_upload(gunicorn, moving_picture((320, 180), frames=8))
    image_id, animation = described['id'], described['animation']
    assert animation['frames'] == 8

    tab = open_tab(**device)
    page = tab.page
    for path, box in (
        ('/?limit=6', f'#grid a[href="/view/{image_id}"]'),
        (f'/view/{image_id}', '#image'),
    ):
        page.goto(f'{gunicorn.url}{path}')
        image = page.locator(f'{box} img')
        image.scroll_into_view_if_needed()
        page.wait_for_function('i => i.complete && i.naturalWidth > 0', arg=image.element_handle())
        assert image.evaluate('i => new URL(i.currentSrc).pathname') == animation['url']
        assert image.evaluate('i => [i.naturalWidth, i.naturalHeight]') == [320, 180]
    page.goto(f'{gunicorn.url}/')
    template = page.eval_on_selector(
        '#tile-template', 't => t.content.querySelector("picture").firstElementChild.outerHTML'
    )
    assert template == '<source class="animation" type="image/webp" srcset="">'


# -- API keys -----------------------------------------------------------------------------------


def test_with_keys_set_the_page_asks_for_one(
    make_gunicorn: Callable[..., Gunicorn], open_tab: OpenTab, tmp_path: pathlib.Path
) -> None:
    environ = {'LOOK_API_KEYS': KEY, 'LOOK_MAX_UPLOAD_BYTES': str(MAX_UPLOAD_BYTES)}
    server = make_gunicorn(tmp_path / 'keyed', workers=1, environ=environ)
    listed = api_upload(server, key=KEY)
    tab = open_tab(f'{server.url}/')
    page = tab.page
    tab.expect_error('status of 401')
    assert page.is_visible('#key-form')
    assert page.text_content('#list-status') == 'Enter an API key above to see the images.'
    assert tile_hrefs(page) == []

    page.set_input_files('#files', [upload_file('a.jpg', PHOTO, 'image/jpeg')])
    wait_for_uploads(page, 1)
    assert page.text_content('#uploads .error') == (
        'Uploading needs an API key: enter one under “API key”.'
    )

    page.fill('#key', KEY)
    page.click('#key-form button[type="submit"]')
    page.wait_for_selector('#grid .tile')
    assert tile_hrefs(page) == [f'/view/{listed["id"]}']
    assert page.text_content('#key-status') == 'A key is kept in this browser.'
    page.set_input_files('#files', [upload_file('b.jpg', PHOTO, 'image/jpeg')])
    page.wait_for_function('() => document.querySelector("#uploads .done")')
    assert tile_hrefs(page) == [f'/view/{i}' for i in api_ids(server, KEY)]

    # Another browser, with neither key nor token, sees the image but cannot delete it.
    stranger = open_tab(f'{server.url}/view/{listed["id"]}').page
    assert stranger.is_visible('#image img') and not stranger.is_visible('#delete')
    page.goto(f'{server.url}/view/{listed["id"]}')
    assert page.is_visible('#delete-button')

    # The key is kept: the list comes back by itself, until the key is forgotten.
    page.goto(f'{server.url}/')
    page.wait_for_selector('#grid .tile')
    assert tile_hrefs(page) == [f'/view/{i}' for i in api_ids(server, KEY)]
    page.click('#forget-key')
    page.wait_for_function('() => document.querySelectorAll("#grid .tile").length === 0')
    page.wait_for_function('() => document.getElementById("list-status").textContent !== ""')
    assert 'needs an API key' in (page.text_content('#list-status') or '')


# -- pages on other sites -------------------------------------------------------------------

EVIL = 'http://evil.example'
# A page on another site that uploads to look with a form: its script puts a
# file of its own making into the form's file input and submits it. The
# browser follows the answer there; the page never reads it, but before, the
# upload was made. (A fetch() from such a page to loopback Chromium blocks by
# itself, as Private Network Access; a navigation it lets through.)
EVIL_PAGE = """<!doctype html><title>Free kittens</title>
<form id="form" method="post" enctype="multipart/form-data" action="{look}/images">
<input id="file" type="file" name="file"></form>
<script>
const bytes = Uint8Array.from(atob('{photo}'), (c) => c.charCodeAt(0));
const transfer = new DataTransfer();
transfer.items.add(new File([bytes], 'kitten.png', {{type: 'image/png'}}));
document.getElementById('file').files = transfer.files;
</script>"""


def test_a_form_on_another_site_cannot_upload_and_the_gallery_still_can(
    gunicorn: Gunicorn, open_tab: OpenTab
) -> None:
    """Chromium marks the form's post as cross-site; look, with no keys, refuses it."""
    before = api_ids(gunicorn)
    tab = open_tab()
    page = tab.page
    photo = base64.b64encode(image_bytes('PNG', size=(64, 48), seed=8)).decode()
    page.route(
        f'{EVIL}/**',
        lambda route: route.fulfill(
            content_type='text/html', body=EVIL_PAGE.format(look=gunicorn.url, photo=photo)
        ),
    )
    tab.expect_error('status of 403')
    page.goto(f'{EVIL}/kittens')

    with page.expect_response(f'{gunicorn.url}/images') as posted:
        page.evaluate('document.getElementById("form").submit()')

    assert posted.value.status == 403
    assert posted.value.request.all_headers().get('origin') == EVIL
    assert json.loads(page.inner_text('body'))['title'] == 'Cross-site request refused'
    assert api_ids(gunicorn) == before

    # The same form on look's own origin is the gallery's own: it uploads.
    page.goto(f'{gunicorn.url}/')
    page.evaluate(
        """([look, photo]) => {
            document.body.insertAdjacentHTML('beforeend', `<form id="own" method="post"
                enctype="multipart/form-data" action="${look}/images">
                <input id="own-file" type="file" name="file"></form>`);
            const bytes = Uint8Array.from(atob(photo), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], 'own.png', {type: 'image/png'}));
            document.getElementById('own-file').files = transfer.files;
        }""",
        [gunicorn.url, photo],
    )
    with page.expect_response(f'{gunicorn.url}/images') as own:
        page.evaluate('document.getElementById("own").submit()')
    assert own.value.status == 303
    assert own.value.request.all_headers().get('origin') == gunicorn.url
    page.wait_for_url(f'{gunicorn.url}/uploaded?**')
    made = api_ids(gunicorn)[0]
    assert tile_hrefs(page) == [f'/view/{made}']
    assert api_ids(gunicorn) == [made, *before]


def test_a_page_whose_name_is_rebound_to_loopback_reaches_nothing(
    gunicorn: Gunicorn, browser: Browser
) -> None:
    """DNS rebinding: the page's own name resolves to 127.0.0.1, so it is the same origin."""
    rebinding = browser.browser_type.launch(
        executable_path=require_executable('chromium'),
        args=[*CHROMIUM_ARGS, '--host-resolver-rules=MAP rebind.evil.example 127.0.0.1'],
    )
    try:
        page = rebinding.new_page()
        rebound = f'http://rebind.evil.example:{gunicorn.port}'
        for path in ('/', '/images'):
            answer = page.goto(f'{rebound}{path}')
            assert answer is not None and answer.status == 421, path
            assert json.loads(page.inner_text('body'))['title'] == 'Misdirected request'
        answer = page.goto(f'http://localhost:{gunicorn.port}/images')
        assert answer is not None and answer.status == 200
    finally:
        rebinding.close()
