"""The generated dataset on disk (one Zarr v3 group per dataset): its layout, its commit records and
their checks, reading it fast, making, mending and replacing it, and describing it (`kd inspect`)."""
