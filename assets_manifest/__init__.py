"""assets_manifest package."""
