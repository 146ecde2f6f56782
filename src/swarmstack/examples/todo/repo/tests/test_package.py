"""The package imports."""

import unittest

import todo


class PackageTest(unittest.TestCase):
    def test_the_package_imports_and_says_what_it_is(self) -> None:
        self.assertIn("todo list", todo.__doc__ or "")


if __name__ == "__main__":
    unittest.main()
