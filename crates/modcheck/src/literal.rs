//! Whether a value written in a module fits an argument's type, as far as the value is literal:
//! Terraform converts strings to numbers and bools (and back) where it can, so only values that
//! could never convert are reported. Variables, references and function calls are left alone.

use hcl::edit::expr::{Expression, ObjectKey};

use crate::schema::{Primitive, Type};

/// What is wrong with `expr` as a value of `ty`, or `None` when it fits or is not known until
/// plan time.
pub fn mismatch(expr: &Expression, ty: &Type) -> Option<String> {
    let shape = Shape::of(expr)?;
    match ty {
        Type::Primitive(Primitive::Any) => None,
        Type::Primitive(primitive) => primitive_mismatch(expr, &shape, *primitive, ty),
        Type::List { list } => match (&shape, expr) {
            (Shape::List, Expression::Array(array)) => {
                array.iter().enumerate().find_map(|(i, e)| {
                    mismatch(e, list).map(|problem| format!("element {i}: {problem}"))
                })
            }
            (Shape::List, _) => None,
            _ => Some(expected(&shape, ty)),
        },
        Type::Map { map } => match (&shape, expr) {
            (Shape::Object, Expression::Object(object)) => {
                object.iter().find_map(|(key, value)| {
                    mismatch(value.expr(), map)
                        .map(|problem| format!("key {}: {problem}", key_text(key)))
                })
            }
            (Shape::Object, _) => None,
            _ => Some(expected(&shape, ty)),
        },
        Type::Object { object: attributes } => match (&shape, expr) {
            (Shape::Object, Expression::Object(object)) => {
                for (key, value) in object.iter() {
                    let name = key_name(key);
                    match name.as_deref().and_then(|name| attributes.get(name)) {
                        Some(attribute) => {
                            if let Some(problem) = mismatch(value.expr(), &attribute.ty) {
                                return Some(format!("key {}: {problem}", key_text(key)));
                            }
                        }
                        None if name.is_some() => {
                            return Some(format!(
                                "key {} is not an attribute of {ty}",
                                key_text(key)
                            ));
                        }
                        None => {}
                    }
                }
                None
            }
            (Shape::Object, _) => None,
            _ => Some(expected(&shape, ty)),
        },
    }
}

fn primitive_mismatch(
    expr: &Expression,
    shape: &Shape,
    primitive: Primitive,
    ty: &Type,
) -> Option<String> {
    match shape {
        Shape::List | Shape::Object => Some(expected(shape, ty)),
        Shape::Template => None, // a string known at plan time: it may convert
        Shape::Bool => (primitive == Primitive::Number).then(|| expected(shape, ty)),
        Shape::Number => (primitive == Primitive::Bool).then(|| expected(shape, ty)),
        Shape::String => {
            let Expression::String(text) = expr else { return None };
            let text = text.value().as_str();
            let converts = match primitive {
                Primitive::Number => text.trim().parse::<f64>().is_ok(),
                Primitive::Bool => text == "true" || text == "false",
                Primitive::String | Primitive::Any => true,
            };
            (!converts).then(|| expected(shape, ty))
        }
    }
}

/// The kind of value an expression certainly is, where that is known without evaluating it.
enum Shape {
    Bool,
    Number,
    /// A quoted string without interpolation, whose text is known.
    String,
    /// A string with interpolations, or a heredoc: a string whose text is not known.
    Template,
    List,
    Object,
}

impl Shape {
    fn of(expr: &Expression) -> Option<Shape> {
        match expr {
            Expression::Bool(_) => Some(Shape::Bool),
            Expression::Number(_) => Some(Shape::Number),
            Expression::String(_) => Some(Shape::String),
            Expression::StringTemplate(_) | Expression::HeredocTemplate(_) => Some(Shape::Template),
            Expression::Array(_) => Some(Shape::List),
            Expression::Object(_) => Some(Shape::Object),
            Expression::ForExpr(for_expr) => {
                Some(if for_expr.key_expr.is_some() { Shape::Object } else { Shape::List })
            }
            Expression::Parenthesis(inner) => Shape::of(inner.inner()),
            // null, references, calls, operators, conditionals: unknown until plan time.
            _ => None,
        }
    }
}

fn expected(shape: &Shape, ty: &Type) -> String {
    let what = match shape {
        Shape::Bool => "a bool",
        Shape::Number => "a number",
        Shape::String => "a string",
        Shape::Template => "a string template",
        Shape::List => "a list",
        Shape::Object => "an object",
    };
    format!("wrong type: {what} where the provider expects {ty}")
}

/// The attribute name an object key spells, if it is a literal name.
fn key_name(key: &ObjectKey) -> Option<String> {
    match key {
        ObjectKey::Ident(ident) => Some(ident.as_str().to_owned()),
        ObjectKey::Expression(Expression::String(text)) => Some(text.value().clone()),
        ObjectKey::Expression(_) => None,
    }
}

fn key_text(key: &ObjectKey) -> String {
    key_name(key).map_or_else(|| "(computed)".to_owned(), |name| format!("\"{name}\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expr(text: &str) -> Expression {
        text.parse().unwrap()
    }

    fn ty(json: &str) -> Type {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn literals_that_terraform_converts_fit() {
        assert_eq!(mismatch(&expr("\"22\""), &ty("\"number\"")), None);
        assert_eq!(mismatch(&expr("\"true\""), &ty("\"bool\"")), None);
        assert_eq!(mismatch(&expr("22"), &ty("\"string\"")), None);
        assert_eq!(mismatch(&expr("true"), &ty("\"string\"")), None);
        assert_eq!(mismatch(&expr("[\"a\", 1]"), &ty(r#"{"list": "string"}"#)), None);
        assert_eq!(mismatch(&expr("{ a = \"b\" }"), &ty(r#"{"map": "string"}"#)), None);
        assert_eq!(mismatch(&expr("var.x"), &ty("\"number\"")), None);
        assert_eq!(mismatch(&expr("\"${var.x}\""), &ty("\"number\"")), None);
        assert_eq!(mismatch(&expr("[for c in var.x : c]"), &ty(r#"{"list": "string"}"#)), None);
        assert_eq!(mismatch(&expr("null"), &ty("\"number\"")), None);
    }

    #[test]
    fn literals_that_never_convert_are_reported() {
        let problem = mismatch(&expr("\"large\""), &ty("\"number\"")).unwrap();
        assert_eq!(problem, "wrong type: a string where the provider expects number");
        assert!(mismatch(&expr("\"yes\""), &ty("\"bool\"")).is_some());
        assert!(mismatch(&expr("1"), &ty("\"bool\"")).is_some());
        assert!(mismatch(&expr("\"a\""), &ty(r#"{"list": "string"}"#)).is_some());
        assert!(mismatch(&expr("\"${var.a}\""), &ty(r#"{"list": "string"}"#)).is_some());
        assert!(mismatch(&expr("[1]"), &ty("\"string\"")).is_some());
        assert!(mismatch(&expr("{ a = 1 }"), &ty("\"string\"")).is_some());
        let element = mismatch(&expr("[\"x\"]"), &ty(r#"{"list": "number"}"#)).unwrap();
        assert!(element.starts_with("element 0: wrong type"), "{element}");
        let key = mismatch(
            &expr("{ b = 1 }"),
            &ty(r#"{"object": {"a": {"type": "number", "required": false}}}"#),
        );
        assert_eq!(key.unwrap(), "key \"b\" is not an attribute of object({a})");
    }
}
