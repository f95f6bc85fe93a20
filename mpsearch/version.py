"""The package version, in the core so that plans and profiles can record it without importing the whole package."""

__version__ = "0.1.0"
