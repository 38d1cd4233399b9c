"""Pure tensor math shared by several methods (masks, layer Hessians): no modules, no hooks."""
