pub(crate) mod densenet;
pub(crate) mod lenet5;
pub(crate) mod mlp;
pub(crate) mod mobilenet;
pub(crate) mod mobilenet_hdr;
pub(crate) mod resnet;
