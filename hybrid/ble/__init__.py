"""BLE side of the hybrid transport: encrypted EID adverts, service UUIDs, scanners, advertisers."""
