"""medi-sim: MeDi-Fed on Flower's simulation engine, the TCGA split by site and the downstream evaluation."""
