"""``python -m look migrate``: a local store moves to S3 and PostgreSQL, losing no image."""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Callable
from typing import Any

import pytest
from falcon.testing import TestClient

from look.__main__ import main
from look.config import Config

from support.imagegen import animation, image_bytes
from support.postgres import PostgresDatabase
from support.seaweed import SeaweedServer
from support.storage import stored_ids, stored_jpeg

MakeClient = Callable[..., TestClient]
MakeConfig = Callable[..., Config]


def listing(client: TestClient, **params: str) -> list[dict[str, object]]:
    response = client.simulate_get('/images', params={'limit': '1000', **params})
    assert response.status_code == 200
    return list(response.json)


@dataclasses.dataclass
class Move:
    """A local store, the shared backends it moves to, and the command that moves it."""

    local: Config
    target: Config
    uploads: list[dict[str, Any]]

    def run(self) -> int:
        return main(
            ['migrate', '--to-index', self.target.index_url, '--to-images', self.target.images_url]
        )


@pytest.fixture
def move(
    make_config: MakeConfig,
    make_client: MakeClient,
    seaweed: SeaweedServer,
    postgres: PostgresDatabase,
    monkeypatch: pytest.MonkeyPatch,
) -> Move:
    """A local store of five images, two of them deleted, to move."""
    local = make_config()
    client = make_client(local)
    uploads = [
        client.simulate_post('/images', body=image_bytes('PNG', size=(96, 64), seed=seed)).json
        for seed in range(5)
    ]
    for gone in (uploads[1], uploads[3]):
        assert client.simulate_delete(gone['image']).status_code == 204
    name = f'm{os.urandom(5).hex()}'
    target = make_config(
        images_url=f's3://look-tests/{name}',
        index_url=postgres.create_schema(name),
        s3_options=seaweed.options,
        storage_path=local.storage_path.parent / 'host',
    )
    for variable in [name for name in os.environ if name.startswith('LOOK_')]:
        monkeypatch.delenv(variable)
    monkeypatch.setenv('LOOK_STORAGE_PATH', str(local.storage_path))
    for variable, value in seaweed.environ.items():
        monkeypatch.setenv(variable, value)
    return Move(local, target, uploads)


def test_every_image_moves_with_its_id_time_token_and_place(
    move: Move, make_client: MakeClient, capsys: pytest.CaptureFixture[str]
) -> None:
    local, target, uploads = move.local, move.target, move.uploads
    before = listing(make_client(local))

    assert move.run() == 0

    output = capsys.readouterr().out
    assert '3 images and 2 deleted ids to move' in output
    assert 'done: 3 images and 2 deleted ids moved, 3 JPEGs copied' in output
    assert 'the index lists 3 images, the local store 3' in output
    shared = make_client(target)
    assert listing(shared) == before
    assert listing(shared, order='newest') == before[::-1]
    for image in before:
        assert stored_jpeg(target, str(image['id'])) == stored_jpeg(local, str(image['id']))
    # A cursor naming an image deleted before the move resumes in place.
    assert listing(shared, after=uploads[1]['id']) == before[1:]
    # The delete token the upload answered with still deletes it, and only it does.
    kept = uploads[2]
    wrong = shared.simulate_delete(kept['image'], headers={'Authorization': 'Bearer nope'})
    assert wrong.status_code == 403
    token = {'Authorization': f'Bearer {kept["delete_token"]}'}
    assert shared.simulate_delete(kept['image'], headers=token).status_code == 204


def test_running_it_again_changes_nothing(
    move: Move, make_client: MakeClient, capsys: pytest.CaptureFixture[str]
) -> None:
    assert move.run() == 0
    target = move.target
    before = listing(make_client(target))
    capsys.readouterr()

    assert move.run() == 0

    assert 'done: 0 images and 0 deleted ids moved, 0 JPEGs copied, 5 there' in (
        capsys.readouterr().out
    )
    assert listing(make_client(target)) == before


def test_an_interrupted_move_is_finished_by_running_it_again(
    move: Move, make_client: MakeClient, postgres: PostgresDatabase
) -> None:
    """Stopped after the last JPEGs were put and before their rows: nothing is lost."""
    local, target = move.local, move.target
    assert move.run() == 0
    schema = target.index_url.rsplit('%3D', 1)[1]
    with postgres.connect() as connection:
        connection.execute(
            f'DELETE FROM {schema}.look_images WHERE seq > '
            f'(SELECT min(seq) + 1 FROM {schema}.look_images)'
        )
    assert len(listing(make_client(target))) == 1

    assert move.run() == 0

    assert listing(make_client(target)) == listing(make_client(local))
    assert stored_ids(target) == stored_ids(local)


def test_it_refuses_to_move_a_store_that_is_not_local(
    move: Move, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv('LOOK_INDEX_URL', move.target.index_url)

    assert move.run() == 2

    assert 'unset LOOK_INDEX_URL' in capsys.readouterr().err


def test_moving_only_the_index_leaves_the_jpegs_where_they_are(
    move: Move, make_client: MakeClient, make_config: MakeConfig
) -> None:
    local, target = move.local, move.target

    assert main(['migrate', '--to-index', target.index_url]) == 0

    same_disk = make_client(
        make_config(index_url=target.index_url, storage_path=pathlib.Path(local.storage_path))
    )
    assert listing(same_disk) == listing(make_client(local))
    for image in listing(same_disk):
        assert same_disk.simulate_get(str(image['image'])).status_code == 200


def test_an_animation_moves_with_its_animated_webp(
    move: Move, make_client: MakeClient, capsys: pytest.CaptureFixture[str]
) -> None:
    local = make_client(move.local)
    created = local.simulate_post('/images', body=animation('GIF', frames=3)).json
    webp = local.simulate_get(created['animation']['url']).content

    assert move.run() == 0

    shared = make_client(move.target)
    moved = shared.simulate_get(f'/images?after={move.uploads[-1]["id"]}').json
    assert [image['animation'] for image in moved] == [created['animation']]
    served = shared.simulate_get(created['animation']['url'])
    assert served.status_code == 200
    assert served.content == webp
    assert shared.simulate_delete(created['image']).status_code == 204
    assert shared.simulate_get(created['animation']['url']).status_code == 404


def test_an_animation_whose_webp_is_missing_is_not_moved(
    move: Move, make_client: MakeClient, capsys: pytest.CaptureFixture[str]
) -> None:
    local = make_client(move.local)
    created = local.simulate_post('/images', body=animation('GIF', frames=3)).json
    (move.local.storage_path / 'images' / f'{created["id"]}.webp').unlink()

    assert move.run() != 0

    assert 'its animated WebP is missing from the local store' in capsys.readouterr().out
    shared = make_client(move.target)
    assert shared.simulate_get(created['image']).status_code == 404
