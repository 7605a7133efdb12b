"""The paper's runs at full scale: one file per base model, `regime=` picks math, medical or FigFont."""
