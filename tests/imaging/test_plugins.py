"""The HEIF and JPEG XL plugins: loaded where uploads are decoded, not where look is imported."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_importing_look_loads_no_plugin_and_register_loads_both() -> None:
    """A web worker imports every floor; libheif and libjxl load in pool processes only."""
    script = textwrap.dedent(
        """
        import sys
        import look.app, look.imaging.pool, look.imaging.convert, look.imaging.render
        from PIL import Image
        Image.init()
        modules = {'pillow_heif', 'pillow_jxl'} & set(sys.modules)
        before = modules, {'HEIF', 'JXL'} & set(Image.OPEN)
        from look.imaging import plugins
        plugins.register()
        plugins.register()
        print(before, {'HEIF', 'JXL', 'AVIF'} & set(Image.OPEN) == {'HEIF', 'JXL', 'AVIF'})
        """
    )
    result = subprocess.run(
        [sys.executable, '-c', script], capture_output=True, text=True, check=True
    )

    assert result.stdout.split('\n')[0] == '(set(), set()) True'
