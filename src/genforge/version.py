"""genforge's version, in a leaf module so provenance records and exports can name it without importing the
package root (which imports the loaders)."""

__version__ = "0.1.0"
