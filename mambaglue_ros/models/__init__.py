"""Networks: the MambaGlue matcher, the selective scan, SuperPoint."""
