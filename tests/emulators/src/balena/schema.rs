//! The slice of the balenaCloud data model the emulator serves: resources, their fields, the
//! foreign keys between them, the reverse navigations and the unique constraints.

/// One emulated resource (an OData entity set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Res {
    Application,
    Device,
    Service,
    ServiceInstall,
    DeviceEnvVar,
    DeviceServiceEnvVar,
    DeviceTag,
}

impl Res {
    pub const ALL: [Res; 7] = [
        Res::Application,
        Res::Device,
        Res::Service,
        Res::ServiceInstall,
        Res::DeviceEnvVar,
        Res::DeviceServiceEnvVar,
        Res::DeviceTag,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn from_name(name: &str) -> Option<Res> {
        Res::ALL.into_iter().find(|r| r.def().name == name)
    }

    pub fn name(self) -> &'static str {
        self.def().name
    }

    pub fn def(self) -> &'static ResDef {
        &DEFS[self.index()]
    }

    pub fn field(self, name: &str) -> Option<&'static Field> {
        self.def().fields.iter().find(|f| f.name == name)
    }

    pub fn reverse(self, name: &str) -> Option<&'static Reverse> {
        self.def().reverse.iter().find(|r| r.name == name)
    }

    /// A navigation from this resource by name: a foreign key (to-one) or a reverse navigation
    /// (to-many).
    pub fn navigation(self, name: &str) -> Option<Nav> {
        if let Some(field) = self.field(name) {
            if let Kind::Fk(target) = field.kind {
                return Some(Nav::ToOne {
                    fk: field.name,
                    target,
                });
            }
            return None;
        }
        self.reverse(name).map(|r| Nav::ToMany {
            child: r.child,
            fk: r.fk,
        })
    }
}

/// The type of a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An integer (the `id`).
    Int,
    /// Text.
    Text,
    /// An ISO-8601 timestamp, stored and compared as text.
    Timestamp,
    /// A foreign key to a row of the given resource (stored as its integer id).
    Fk(Res),
}

/// A column of a resource.
#[derive(Debug)]
pub struct Field {
    pub name: &'static str,
    pub kind: Kind,
    /// Whether a POST must give it (fields that are not required default to null, or are
    /// computed, see [`crate::balena`]'s store).
    pub required: bool,
    /// Whether a POST or PATCH body may set it.
    pub writable: bool,
}

/// A to-many navigation: the rows of `child` whose foreign key `fk` points at this row.
#[derive(Debug)]
pub struct Reverse {
    pub name: &'static str,
    pub child: Res,
    pub fk: &'static str,
}

/// A navigation step, resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    /// Follow this row's foreign key `fk` to one row of `target` (or none when null).
    ToOne { fk: &'static str, target: Res },
    /// The rows of `child` whose `fk` is this row's id.
    ToMany { child: Res, fk: &'static str },
}

impl Nav {
    pub fn target(self) -> Res {
        match self {
            Nav::ToOne { target, .. } => target,
            Nav::ToMany { child, .. } => child,
        }
    }
}

#[derive(Debug)]
pub struct ResDef {
    pub name: &'static str,
    pub fields: &'static [Field],
    pub reverse: &'static [Reverse],
    /// Unique constraints, each a list of field names.
    pub unique: &'static [&'static [&'static str]],
}

const fn f(name: &'static str, kind: Kind, required: bool) -> Field {
    Field {
        name,
        kind,
        required,
        writable: true,
    }
}

const ID: Field = Field {
    name: "id",
    kind: Kind::Int,
    required: false,
    writable: false,
};
const CREATED_AT: Field = Field {
    name: "created_at",
    kind: Kind::Timestamp,
    required: false,
    writable: false,
};
const MODIFIED_AT: Field = Field {
    name: "modified_at",
    kind: Kind::Timestamp,
    required: false,
    writable: false,
};

static DEFS: [ResDef; 7] = [
    ResDef {
        name: "application",
        fields: &[
            ID,
            f("app_name", Kind::Text, true),
            f("slug", Kind::Text, false),
            CREATED_AT,
            MODIFIED_AT,
        ],
        reverse: &[
            Reverse {
                name: "owns__device",
                child: Res::Device,
                fk: "belongs_to__application",
            },
            Reverse {
                name: "service",
                child: Res::Service,
                fk: "application",
            },
        ],
        unique: &[&["slug"]],
    },
    ResDef {
        name: "device",
        fields: &[
            ID,
            f("uuid", Kind::Text, true),
            f("device_name", Kind::Text, false),
            f("belongs_to__application", Kind::Fk(Res::Application), true),
            CREATED_AT,
            MODIFIED_AT,
        ],
        reverse: &[
            Reverse {
                name: "service_install",
                child: Res::ServiceInstall,
                fk: "device",
            },
            Reverse {
                name: "device_environment_variable",
                child: Res::DeviceEnvVar,
                fk: "device",
            },
            Reverse {
                name: "device_tag",
                child: Res::DeviceTag,
                fk: "device",
            },
        ],
        unique: &[&["uuid"]],
    },
    ResDef {
        name: "service",
        fields: &[
            ID,
            f("service_name", Kind::Text, true),
            f("application", Kind::Fk(Res::Application), true),
            CREATED_AT,
            MODIFIED_AT,
        ],
        reverse: &[Reverse {
            name: "service_install",
            child: Res::ServiceInstall,
            fk: "installs__service",
        }],
        unique: &[&["application", "service_name"]],
    },
    ResDef {
        name: "service_install",
        fields: &[
            ID,
            f("device", Kind::Fk(Res::Device), true),
            f("installs__service", Kind::Fk(Res::Service), true),
            CREATED_AT,
            MODIFIED_AT,
        ],
        reverse: &[Reverse {
            name: "device_service_environment_variable",
            child: Res::DeviceServiceEnvVar,
            fk: "service_install",
        }],
        unique: &[&["device", "installs__service"]],
    },
    ResDef {
        name: "device_environment_variable",
        fields: &[
            ID,
            f("device", Kind::Fk(Res::Device), true),
            f("name", Kind::Text, true),
            f("value", Kind::Text, true),
            CREATED_AT,
            MODIFIED_AT,
        ],
        reverse: &[],
        unique: &[&["device", "name"]],
    },
    ResDef {
        name: "device_service_environment_variable",
        fields: &[
            ID,
            f("service_install", Kind::Fk(Res::ServiceInstall), true),
            f("name", Kind::Text, true),
            f("value", Kind::Text, true),
            CREATED_AT,
            MODIFIED_AT,
        ],
        reverse: &[],
        unique: &[&["service_install", "name"]],
    },
    ResDef {
        name: "device_tag",
        fields: &[
            ID,
            f("device", Kind::Fk(Res::Device), true),
            f("tag_key", Kind::Text, true),
            f("value", Kind::Text, true),
            CREATED_AT,
            MODIFIED_AT,
        ],
        reverse: &[],
        unique: &[&["device", "tag_key"]],
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defs_are_indexed_by_variant() {
        for r in Res::ALL {
            assert_eq!(Res::from_name(r.name()), Some(r));
            for rev in r.def().reverse {
                let child_fk = rev.child.field(rev.fk).map(|f| f.kind);
                assert_eq!(child_fk, Some(Kind::Fk(r)), "{}.{}", r.name(), rev.name);
            }
        }
    }
}
