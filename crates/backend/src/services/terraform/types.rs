//! Terraform type constraints (`string`, `list(number)`, `object({a = optional(string)})`, ...)
//! parsed from a module's `variable` blocks, and the check of a caller's JSON value against one.
//! This is how `POST /provision` refuses a mistyped variable before Terraform ever runs.

use std::{collections::BTreeMap, fmt};

use hcl::{Expression, ObjectKey};
use serde_json::Value;
use wire::FieldError;

/// A variable's declared type.
#[derive(Debug, Clone, PartialEq)]
pub enum TypeConstraint {
    Any,
    String,
    Number,
    Bool,
    List(Box<TypeConstraint>),
    Set(Box<TypeConstraint>),
    Map(Box<TypeConstraint>),
    Tuple(Vec<TypeConstraint>),
    Object(BTreeMap<String, Attribute>),
}

/// One attribute of an `object(...)` type.
#[derive(Debug, Clone, PartialEq)]
pub struct Attribute {
    pub ty: TypeConstraint,
    /// Declared with `optional(...)`: may be left out.
    pub optional: bool,
}

impl TypeConstraint {
    /// Parses the expression of a `type = ...` attribute.
    pub fn parse(expr: &Expression) -> Result<Self, String> {
        match expr {
            Expression::Variable(name) => match name.as_str() {
                "any" => Ok(Self::Any),
                "string" => Ok(Self::String),
                "number" => Ok(Self::Number),
                "bool" => Ok(Self::Bool),
                other => Err(format!("unknown type `{other}`")),
            },
            Expression::FuncCall(call) => {
                let name = call.name.name.as_str();
                let one_arg = || match call.args.as_slice() {
                    [arg] => Ok(arg),
                    _ => Err(format!("`{name}(...)` takes exactly one argument")),
                };
                match name {
                    "list" => Ok(Self::List(Box::new(Self::parse(one_arg()?)?))),
                    "set" => Ok(Self::Set(Box::new(Self::parse(one_arg()?)?))),
                    "map" => Ok(Self::Map(Box::new(Self::parse(one_arg()?)?))),
                    "tuple" => match one_arg()? {
                        Expression::Array(items) => {
                            items.iter().map(Self::parse).collect::<Result<_, _>>().map(Self::Tuple)
                        }
                        _ => Err("`tuple(...)` takes a list of types".to_owned()),
                    },
                    "object" => match one_arg()? {
                        Expression::Object(attributes) => {
                            let mut parsed = BTreeMap::new();
                            for (key, value) in attributes {
                                let key = match key {
                                    ObjectKey::Identifier(ident) => ident.as_str().to_owned(),
                                    ObjectKey::Expression(Expression::String(s)) => s.clone(),
                                    _ => {
                                        return Err(
                                            "object attribute names must be plain".to_owned()
                                        );
                                    }
                                };
                                parsed.insert(key, Attribute::parse(value)?);
                            }
                            Ok(Self::Object(parsed))
                        }
                        _ => Err("`object(...)` takes a map of attribute types".to_owned()),
                    },
                    other => Err(format!("unknown type constructor `{other}(...)`")),
                }
            }
            _ => Err("not a type expression".to_owned()),
        }
    }

    /// Checks `value` against this type, pushing one error per mismatch at `path`.
    /// Whether a value that passed [`check`](Self::check) reaches Terraform's conditions
    /// unchanged: a set is deduplicated and an object gets its optional attributes filled in
    /// first, which the backend does not reproduce, so their conditions stay Terraform's.
    pub fn passes_values_unchanged(&self) -> bool {
        match self {
            Self::Any | Self::String | Self::Number | Self::Bool => true,
            Self::List(item) | Self::Map(item) => item.passes_values_unchanged(),
            Self::Tuple(types) => types.iter().all(Self::passes_values_unchanged),
            Self::Set(_) | Self::Object(_) => false,
        }
    }

    pub fn check(&self, value: &Value, path: &str, errors: &mut Vec<FieldError>) {
        let mismatch = |errors: &mut Vec<FieldError>| {
            errors
                .push(FieldError::new(path, format!("expected {self}, got {}", json_kind(value))));
        };
        match (self, value) {
            (_, Value::Null) | (Self::Any, _) => {}
            (Self::String, Value::String(_))
            | (Self::Number, Value::Number(_))
            | (Self::Bool, Value::Bool(_)) => {}
            (Self::List(item) | Self::Set(item), Value::Array(items)) => {
                for (i, value) in items.iter().enumerate() {
                    item.check(value, &format!("{path}[{i}]"), errors);
                }
            }
            (Self::Tuple(types), Value::Array(items)) => {
                if types.len() == items.len() {
                    for (i, (ty, value)) in types.iter().zip(items).enumerate() {
                        ty.check(value, &format!("{path}[{i}]"), errors);
                    }
                } else {
                    errors.push(FieldError::new(
                        path,
                        format!("expected {} elements, got {}", types.len(), items.len()),
                    ));
                }
            }
            (Self::Map(item), Value::Object(entries)) => {
                for (key, value) in entries {
                    item.check(value, &format!("{path}.{key}"), errors);
                }
            }
            (Self::Object(attributes), Value::Object(entries)) => {
                for (name, attribute) in attributes {
                    match entries.get(name) {
                        Some(value) => attribute.ty.check(value, &format!("{path}.{name}"), errors),
                        None if attribute.optional => {}
                        None => errors.push(FieldError::new(
                            format!("{path}.{name}"),
                            "required attribute is missing",
                        )),
                    }
                }
                for name in entries.keys().filter(|name| !attributes.contains_key(*name)) {
                    errors.push(FieldError::new(format!("{path}.{name}"), "unknown attribute"));
                }
            }
            _ => mismatch(errors),
        }
    }
}

impl Attribute {
    fn parse(expr: &Expression) -> Result<Self, String> {
        if let Expression::FuncCall(call) = expr {
            if call.name.name.as_str() == "optional" {
                return match call.args.as_slice() {
                    [ty] | [ty, _] => Ok(Self { ty: TypeConstraint::parse(ty)?, optional: true }),
                    _ => Err("`optional(...)` takes a type and an optional default".to_owned()),
                };
            }
        }
        Ok(Self { ty: TypeConstraint::parse(expr)?, optional: false })
    }
}

impl fmt::Display for TypeConstraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("any"),
            Self::String => f.write_str("string"),
            Self::Number => f.write_str("number"),
            Self::Bool => f.write_str("bool"),
            Self::List(item) => write!(f, "list({item})"),
            Self::Set(item) => write!(f, "set({item})"),
            Self::Map(item) => write!(f, "map({item})"),
            Self::Tuple(items) => {
                f.write_str("tuple([")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{item}")?;
                }
                f.write_str("])")
            }
            Self::Object(attributes) => {
                f.write_str("object({")?;
                for (i, (name, attribute)) in attributes.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    if attribute.optional {
                        write!(f, "{name} = optional({})", attribute.ty)?;
                    } else {
                        write!(f, "{name} = {}", attribute.ty)?;
                    }
                }
                f.write_str("})")
            }
        }
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a bool",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn ty(source: &str) -> TypeConstraint {
        let body: hcl::Body = hcl::from_str(&format!("t = {source}")).unwrap();
        let expr = body.attributes().next().unwrap().expr();
        TypeConstraint::parse(expr).unwrap()
    }

    fn errors(source: &str, value: Value) -> Vec<String> {
        let mut errors = Vec::new();
        ty(source).check(&value, "v", &mut errors);
        errors.into_iter().map(|e| format!("{}: {}", e.field, e.message)).collect()
    }

    #[test]
    fn types_parse_and_print_back() {
        for source in [
            "string",
            "number",
            "bool",
            "any",
            "list(string)",
            "map(number)",
            "set(bool)",
            "tuple([string, number])",
            "object({name = string, size = optional(number)})",
            "list(object({cidr = string}))",
        ] {
            assert_eq!(ty(source).to_string(), source);
        }
        let body: hcl::Body = hcl::from_str("t = lisst(string)").unwrap();
        let err = TypeConstraint::parse(body.attributes().next().unwrap().expr()).unwrap_err();
        assert!(err.contains("lisst"), "{err}");
    }

    #[test]
    fn values_are_checked_deeply_with_paths() {
        assert!(errors("string", json!("eu-west-1")).is_empty());
        assert_eq!(errors("number", json!("3")), ["v: expected number, got a string"]);
        assert_eq!(
            errors("list(string)", json!(["a", 1])),
            ["v[1]: expected string, got a number"]
        );
        assert_eq!(
            errors("map(number)", json!({"a": 1, "b": true})),
            ["v.b: expected number, got a bool"]
        );
        assert_eq!(
            errors(
                "object({name = string, size = optional(number)})",
                json!({"size": 2, "extra": 1})
            ),
            ["v.name: required attribute is missing", "v.extra: unknown attribute"]
        );
        assert!(
            errors("object({name = string, size = optional(number)})", json!({"name": "x"}))
                .is_empty()
        );
        assert_eq!(
            errors("tuple([string, number])", json!(["a"])),
            ["v: expected 2 elements, got 1"]
        );
        assert!(errors("any", json!({"whatever": [1, "x"]})).is_empty());
        assert!(
            errors("number", Value::Null).is_empty(),
            "null is checked by nullability, not type"
        );
    }
}
