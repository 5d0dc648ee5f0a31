"""The landing zone: files dropped by the historian, MES, LIMS and CMMS."""
