"""The one tolerance helper of the test suite (docs/architecture.md, convention 5).

Tolerances are keyed by dtype. A test that needs a looser tolerance passes
``rtol``/``atol`` explicitly, with a comment saying why.
"""

import numpy as np

_RTOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-5}
_ATOL = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 1e-6}


def assert_close(actual, expected, *, rtol=None, atol=None, err_msg=""):
    """Assert ``actual`` equals ``expected`` within the dtype's tolerance."""
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    dtype = np.result_type(actual.dtype, expected.dtype, np.float32)
    rtol = _RTOL.get(dtype, 1e-10) if rtol is None else rtol
    atol = _ATOL.get(dtype, 1e-12) if atol is None else atol
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=err_msg)
